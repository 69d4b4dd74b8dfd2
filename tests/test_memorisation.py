"""The memorisation check flags a "model" that returns its training images and not real held-out ones."""
import pytest
import torch

from undiffuse.data import load_data
from undiffuse.eval.memorisation import COPY_RATIO, closest_pairs, memorisation, nearest, summary
from undiffuse.eval.metrics import feature_extractor


@pytest.fixture(scope="module")
def digits():
    images = load_data("mnist").images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order[:4000]], images[order[4000:4500]]  # training, held out


def test_nearest_matches_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 7, generator=g), torch.randn(30, 7, generator=g)
    d, i = nearest(a, b)
    brute = ((a[:, None] - b[None]) ** 2).sum(-1).sqrt()
    assert torch.allclose(d, brute.min(1).values.double()) and torch.equal(i, brute.argmin(1))
    d_self, i_self = nearest(b, b, exclude_self=True)
    brute_self = ((b[:, None] - b[None]) ** 2).sum(-1).sqrt() + torch.diag(torch.full((30,), float("inf")))
    assert torch.equal(i_self, brute_self.argmin(1))


def test_copies_are_flagged_and_held_out_images_are_not(digits):
    training, held_out = digits
    extract = feature_extractor("digits")
    g = torch.Generator().manual_seed(1)
    copies = training[torch.randperm(len(training), generator=g)[:300]]
    noisy = (copies + 0.1 * torch.randn(copies.shape, generator=g)).clamp(-1, 1)
    train_f = extract(training)
    exact = memorisation(copies, training, extract(copies), train_f)
    assert exact["pixels"]["near_copies"] == exact["features"]["near_copies"] == 1.0
    assert memorisation(noisy, training)["pixels"]["near_copies"] > 0.95
    real = memorisation(held_out, training, extract(held_out), train_f)
    assert real["pixels"]["near_copies"] < 0.02 and real["features"]["near_copies"] < 0.08
    for space in ("pixels", "features"):  # held-out images are as far from the training set as its images
        assert 0.8 < real[space]["median_ratio"] < 1.25, space  # are from each other
    assert COPY_RATIO < 0.5


def test_the_summary_is_json_and_the_pairs_are_the_closest(digits):
    import json

    training, _ = digits
    fake = torch.cat([training[:3], torch.rand(5, 1, 28, 28) * 2 - 1])
    scores = memorisation(fake, training)
    json.dumps(summary(scores))
    pairs = closest_pairs(fake, training, scores, k=3)
    assert pairs.shape == (6, 1, 28, 28) and torch.equal(pairs[:3], pairs[3:])  # the three copies and their sources
