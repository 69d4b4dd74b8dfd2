"""FID, KID and precision/recall against closed forms and brute force; the digit features on real
digits (halves score near zero, blur and shifts score worse the more there is of them); Inception's
layout against the reference names."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from undiffuse.errors import DataError

from undiffuse.eval.metrics import (feature_extractor, frechet_distance, frechet_distance_from_moments, kid,
                               polynomial_mmd2, precision_recall, score)


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T


# --- FID -----------------------------------------------------------------------------------------

def test_fid_of_diagonal_gaussians_is_the_closed_form():
    # W2^2 of N(m1, diag s1^2) and N(m2, diag s2^2) = |m1 - m2|^2 + sum (s1 - s2)^2
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    expected = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance_from_moments(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2)) == pytest.approx(expected, rel=1e-10)


def test_fid_of_general_gaussians_matches_the_symmetric_form():
    # tr (A B)^(1/2) = tr (A^(1/2) B A^(1/2))^(1/2), computed here by eigendecompositions only
    rng = np.random.default_rng(0)
    d = 6
    a, b = _random_cov(rng, d), _random_cov(rng, d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    root_a = _psd_sqrt(a)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(a) + np.trace(b) - 2 * np.trace(_psd_sqrt(root_a @ b @ root_a))
    assert frechet_distance_from_moments(mu_a, a, mu_b, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_from_moments(mu_b, b, mu_a, a) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_from_moments(mu_a, a, mu_a, a) == pytest.approx(0, abs=1e-8)


def test_fid_of_large_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    a, b = _random_cov(rng, d), _random_cov(rng, d)
    mu_a, mu_b = np.zeros(d), np.full(d, 0.5)
    x = rng.multivariate_normal(mu_a, a, n)
    y = rng.multivariate_normal(mu_b, b, n)
    exact = frechet_distance_from_moments(mu_a, a, mu_b, b)
    assert frechet_distance(x, y) == pytest.approx(exact, rel=0.02)
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(frechet_distance(x, y))


def test_fid_with_fewer_samples_than_features_stays_finite():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 32)), rng.normal(size=(10, 32))
    assert np.isfinite(frechet_distance(x, y)) and frechet_distance(x, y) > 0


def test_metrics_reject_bad_features():
    with pytest.raises(ValueError, match="widths"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        kid(np.full((5, 3), np.nan), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="N >= 2"):
        precision_recall(np.zeros((1, 3)), np.zeros((5, 3)))


# --- KID -----------------------------------------------------------------------------------------

def test_polynomial_mmd2_matches_a_brute_force_u_statistic():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.2, size=(9, 5))

    def k(p, q):  # Binkowski et al.'s kernel, one pair at a time
        return np.array([[(sum(ui * vi for ui, vi in zip(u, v)) / 5 + 1) ** 3 for v in q] for u in p])

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    within_x = sum(kxx[i, j] for i in range(7) for j in range(7) if i != j) / (7 * 6)
    within_y = sum(kyy[i, j] for i in range(9) for j in range(9) if i != j) / (9 * 8)
    assert polynomial_mmd2(x, y) == pytest.approx(within_x + within_y - 2 * kxy.mean(), rel=1e-10)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(4)
    # one distribution, small subsets: the biased (V-statistic) estimate would sit well above zero
    a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    mean, std = kid(a, b, subsets=200, subset_size=20)
    assert abs(mean) < 3 * std / np.sqrt(200) + 1e-3
    biased = np.mean([((x @ x.T / 8 + 1) ** 3).mean() + ((y @ y.T / 8 + 1) ** 3).mean()
                      - 2 * ((x @ y.T / 8 + 1) ** 3).mean()
                      for x, y in ((a[i * 20:(i + 1) * 20], b[i * 20:(i + 1) * 20]) for i in range(100))])
    assert biased > 10 * abs(mean)
    shifted, shifted_std = kid(a, b + 0.5, subsets=50, subset_size=200)
    assert shifted > 10 * shifted_std / np.sqrt(50) and shifted > 10 * abs(mean)


def test_kid_clips_the_subset_size_and_depends_on_its_seed_only():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(500, 4))
    assert kid(a, b, subsets=5, seed=1) == kid(a, b, subsets=5, seed=1)
    assert kid(a, b, subsets=5, seed=1) != kid(a, b, subsets=5, seed=2)
    # 30 rows from each of two 30-row sets: every subset is both sets whole
    mean, std = kid(a, b[:30], subsets=4)
    assert mean == pytest.approx(polynomial_mmd2(a, b[:30]), rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="subset"):
        kid(a, b, subset_size=1)


# --- precision and recall ------------------------------------------------------------------------

def _brute_force_precision_recall(real, fake, k):
    def radii(points):
        return [sorted(np.linalg.norm(points - p, axis=1))[k] for p in points]  # [0] is p itself

    def share_inside(points, centres, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points])

    return share_inside(fake, real, radii(real)), share_inside(real, fake, radii(fake))


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.7, 0.6, size=(50, 3))
    expected = _brute_force_precision_recall(real, fake, 3)
    assert precision_recall(real, fake, k=3) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the sets overlap partly


def test_precision_is_one_for_real_points_and_recall_low_for_one_mode():
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=10, size=(5, 2))
    real = np.concatenate([c + rng.normal(size=(200, 2)) for c in centres])
    precision, recall = precision_recall(real, real[rng.choice(len(real), 300, replace=False)])
    assert precision == 1.0 and recall > 0.5
    collapsed = centres[0] + 0.3 * rng.normal(size=(300, 2))  # one mode of five, and narrower
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.2


# --- the digit feature space -----------------------------------------------------------------------

def _blur(images, sigma):
    r = 3
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    x = F.conv2d(F.pad(images, (r, r, 0, 0), mode="replicate"), k)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(2, 3))


@pytest.fixture(scope="module")
def digit_halves():
    from undiffuse.data import load_data

    images = load_data("mnist").images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order[:1500]], images[order[1500:3000]]


@pytest.fixture(scope="module")
def extract():
    return feature_extractor("digits")


def test_digit_features_shape_dtype_and_batching(extract, digit_halves):
    real = digit_halves[0][:40]
    feats = extract(real)
    assert feats.shape == (40, 128) and feats.dtype == torch.float64
    assert torch.allclose(torch.cat([extract(real[:13]), extract(real[13:])]), feats, atol=1e-5)
    rgb32 = F.interpolate(real, size=(32, 32), mode="bilinear").expand(-1, 3, -1, -1)
    assert extract(rgb32).shape == (40, 128)
    with pytest.raises(ValueError, match="unknown features"):
        feature_extractor("vgg")


def test_real_digit_halves_score_near_zero_and_blur_and_shifts_worse(extract, digit_halves):
    a, b = digit_halves
    fa = extract(a)
    fids, kids = [], []
    for fake in (b, _blur(b, 0.6), _blur(b, 1.2)):
        fb = extract(fake)
        fids.append(frechet_distance(fa, fb))
        kids.append(kid(fa, fb, subsets=10, subset_size=500))
    print("FID", fids, "KID", kids)
    assert fids[0] < 1.0 and abs(kids[0][0]) < 0.02  # real vs real
    assert fids == sorted(fids) and fids[1] > 10 * fids[0]
    kid_means = [m for m, _ in kids]
    assert kid_means == sorted(kid_means) and kid_means[1] > 5 * kids[1][1] / np.sqrt(10)
    shifted = [frechet_distance(fa, extract(torch.roll(b, s, dims=3))) for s in (1, 2)]
    assert fids[0] < shifted[0] < shifted[1]


def test_score_reports_every_metric(digit_halves):
    a, b = digit_halves
    result = score(a[:300], b[:200])
    assert set(result) == {"fid", "kid", "kid_std", "precision", "recall", "n_real", "n_fake", "features"}
    assert result["n_real"] == 300 and result["n_fake"] == 200 and result["features"] == "digits"
    assert 0.5 < result["precision"] <= 1 and 0.5 < result["recall"] <= 1


# --- Inception -----------------------------------------------------------------------------------

def test_inception_says_where_to_get_absent_weights(tmp_path, monkeypatch):
    from undiffuse.eval.inception import WEIGHTS_URL, find_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(DataError) as caught:
        feature_extractor("inception")
    message = str(caught.value)
    assert WEIGHTS_URL in message and "--inception-weights" in message and "\n" not in message
    with pytest.raises(DataError, match="pt_inception"):
        find_weights(tmp_path / "nothing.pth")


def test_inception_has_the_reference_layout_and_loads_a_weights_file(tmp_path):
    from undiffuse.eval.inception import FIDInception

    reference = {}
    for line in (Path(__file__).parent / "data" / "inception_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, shape = line.partition(" ")
            reference[name] = tuple(int(s) for s in shape.split(",") if s)
    net = FIDInception()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == reference
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.rand(s, generator=g) + 0.5 if "running_var" in k else torch.randn(s, generator=g) * 0.05)
             if not k.endswith("num_batches_tracked") else torch.tensor(0) for k, s in reference.items()}
    torch.save(state, tmp_path / "inception.pth")
    extract = feature_extractor("inception", weights=tmp_path / "inception.pth")
    feats = extract(torch.rand(1, 1, 28, 28) * 2 - 1)
    assert feats.shape == (1, 2048) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="does not hold"):
        feature_extractor("inception", weights=tmp_path / "junk.pth")
