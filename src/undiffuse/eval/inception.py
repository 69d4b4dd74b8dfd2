"""The Inception-v3 of FID: TensorFlow's 2015-12-05 graph as pytorch-fid and torch-fidelity port it.

Only the path to the 2048 pool features is built, with the parameter names of the reference
weights file (pt_inception-2015-12-05-6726825d.pth, the same file under both projects) so that it
loads as it is. Written here because both reference packages import torchvision, which this
library does not depend on. The TensorFlow graph differs from torchvision's Inception3 in its
pooling: average pools leave the zero padding out of the mean, and the last block max-pools.
Input handling follows pytorch-fid: 8-bit levels, bilinear resize to 299 x 299, range [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError

WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
# pytorch-fid and torch-fidelity cache the same weights under these names in torch's hub folder
CACHED_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
SIDE = 299


class Conv(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's eps 1e-3), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _chain(block: nn.Module, names: str, x: Tensor) -> Tensor:
    for name in names.split():
        x = getattr(block, name)(x)
    return x


def _tf_avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):  # Mixed_5b..5d: 35 x 35
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(c_in, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(c_in, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), _chain(self, "branch5x5_1 branch5x5_2", x),
                          _chain(self, "branch3x3dbl_1 branch3x3dbl_2 branch3x3dbl_3", x),
                          self.branch_pool(_tf_avg_pool(x))], 1)


class ReduceB(nn.Module):  # Mixed_6a: 35 -> 17
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = Conv(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), _chain(self, "branch3x3dbl_1 branch3x3dbl_2 branch3x3dbl_3", x),
                          F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):  # Mixed_6b..6e: 17 x 17, factorised 7 x 7 convolutions
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(c_in, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(c_in, c7, 1), Conv(c7, c7, **row), Conv(c7, 192, **col)
        self.branch7x7dbl_1 = Conv(c_in, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = Conv(c7, c7, **col), Conv(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = Conv(c7, c7, **col), Conv(c7, 192, **row)
        self.branch_pool = Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), _chain(self, "branch7x7_1 branch7x7_2 branch7x7_3", x),
                          _chain(self, "branch7x7dbl_1 branch7x7dbl_2 branch7x7dbl_3 branch7x7dbl_4 branch7x7dbl_5", x),
                          self.branch_pool(_tf_avg_pool(x))], 1)


class ReduceD(nn.Module):  # Mixed_7a: 17 -> 8
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(c_in, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(c_in, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([_chain(self, "branch3x3_1 branch3x3_2", x),
                          _chain(self, "branch7x7x3_1 branch7x7x3_2 branch7x7x3_3 branch7x7x3_4", x),
                          F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):  # Mixed_7b, 7c: 8 x 8, branches that split into 1 x 3 and 3 x 1
    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.max_pool = max_pool  # the TensorFlow graph max-pools in its last block (Mixed_7c)
        self.branch1x1 = Conv(c_in, 320, 1)
        self.branch3x3_1 = Conv(c_in, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, **row), Conv(384, 384, **col)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(c_in, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = Conv(384, 384, **row), Conv(384, 384, **col)
        self.branch_pool = Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        b = _chain(self, "branch3x3dbl_1 branch3x3dbl_2", x)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)  # 299 -> 149
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)  # 147
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)  # 147, max-pooled to 73
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)  # 71, max-pooled to 35
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = MixedA(192, 32), MixedA(256, 64), MixedA(288, 64)
        self.Mixed_6a = ReduceB(288)  # 17
        self.Mixed_6b, self.Mixed_6c = MixedC(768, 128), MixedC(768, 160)
        self.Mixed_6d, self.Mixed_6e = MixedC(768, 160), MixedC(768, 192)
        self.Mixed_7a = ReduceD(768)  # 8
        self.Mixed_7b, self.Mixed_7c = MixedE(1280, max_pool=False), MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # ImageNet logits (1008 classes); unused by FID, kept to load the file

    def pool_features(self, x: Tensor) -> Tensor:
        """(B, 3, 299, 299) in [-1, 1] -> (B, 2048): the pool3 features of FID."""
        x = _chain(self, "Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3", x)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(self, "Conv2d_3b_1x1 Conv2d_4a_3x3", x)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(self, "Mixed_5b Mixed_5c Mixed_5d Mixed_6a Mixed_6b Mixed_6c Mixed_6d Mixed_6e "
                         "Mixed_7a Mixed_7b Mixed_7c", x)
        return x.mean((2, 3))

    forward = pool_features


def as_inception_input(images: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) in [-1, 1] -> (B, 3, 299, 299): 8-bit levels, as images read from PNG files."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    x = x.expand(-1, 3, -1, -1)
    return F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)


def find_weights(weights: str | Path | None = None) -> Path:
    """The weights file: `weights` when given, else the copy in torch's hub cache."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DataError(f"Inception weights '{path}' do not exist; download {WEIGHTS_URL}")
        return path
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in CACHED_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"Inception weights for FID not found in {folder}; download {WEIGHTS_URL} "
                            f"into that folder, or pass --inception-weights PATH")


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu") -> FIDInception:
    """FIDInception with the reference weights; the file is read without running any code."""
    path = find_weights(weights)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
        net = FIDInception()
        net.load_state_dict(state)
    except Exception as e:  # a foreign or truncated file: torch and safetensors raise various errors
        raise DataError(f"'{path}' does not hold the FID Inception weights ({' '.join(str(e).split())[:200]})") from None
    return net.to(device).eval().requires_grad_(False)
