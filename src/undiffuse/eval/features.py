"""Feature networks for the metrics: images in [-1, 1] -> one feature vector per image.

`DigitNet` is a small CNN classifier of MNIST digits; its penultimate layer (128 numbers, before
the ReLU, so that no feature is constantly zero), standardised by the mean and std of the real
training digits, is the offline feature space in which `undiffuse eval` scores digit runs. Its weights ship with the
package (assets/digit_features.safetensors), trained on the bundled digits by
benchmarks/train_digit_features.py, so scoring a digits run needs no download.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError

DIGIT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "digit_features.safetensors"
DIGIT_SIDE = 28


class DigitNet(nn.Module):
    """conv-pool, conv-pool, dense: 128 features, then ReLU and 10 class logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128),  # (B, 128)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(128, 10))
        # set after training from the real training digits; they make every feature's scale ~1
        self.register_buffer("feature_mean", torch.zeros(128))
        self.register_buffer("feature_std", torch.ones(128))

    def forward(self, x: Tensor) -> Tensor:  # x in [-1, 1], (B, 1, 28, 28) -> (B, 10) logits
        return self.head(self.features(x))

    def embed(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) in [-1, 1] -> (B, 128) standardised features."""
        return (self.features(x) - self.feature_mean) / self.feature_std


def load_digit_net(weights: str | Path | None = None, device: str | torch.device = "cpu") -> DigitNet:
    """The trained DigitNet, from `weights` or the copy shipped with the package."""
    from safetensors.torch import load_file

    path = Path(weights) if weights else DIGIT_WEIGHTS
    if not path.is_file():
        raise DataError(f"digit feature weights '{path}' do not exist"
                                + ("" if weights else "; rerun benchmarks/train_digit_features.py"))
    net = DigitNet()
    try:
        net.load_state_dict(load_file(str(path)))
    except Exception as e:  # a foreign or truncated file: safetensors and torch raise various errors
        raise DataError(f"'{path}' does not hold DigitNet weights ({' '.join(str(e).split())[:200]})") from None
    return net.to(device).eval().requires_grad_(False)


def as_digit_input(images: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) in [-1, 1] -> (B, 1, 28, 28): the luminance, resized with antialiasing."""
    from ..data.transforms import set_channels  # luminance weights sum to 1, so [-1, 1] maps to [-1, 1]

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = set_channels(images.float(), 1)
    if x.shape[-2:] != (DIGIT_SIDE, DIGIT_SIDE):
        x = F.interpolate(x, size=(DIGIT_SIDE, DIGIT_SIDE), mode="bilinear", antialias=True, align_corners=False)
    return x
