"""Feature networks for the metrics: images in [-1, 1] -> one feature vector per image.

`DigitNet` is a small CNN classifier of MNIST digits; its penultimate layer (128 numbers, before
the ReLU, so that no feature is constantly zero), standardised by the mean and std of the real
training digits, is the offline feature space in which `undiffuse eval` scores digit runs. Its weights ship with the
package (assets/digit_features.safetensors), trained on the bundled digits by
benchmarks/train_digit_features.py, so scoring a digits run needs no download.

`EmojiNet` is the same idea for the bundled colour set: a CNN that tells the 9 emoji categories apart
at 32x32, trained by benchmarks/train_emoji_judge.py on four fifths of the set (its accuracy on the
fifth it never saw is in its file's metadata); its 256 penultimate features score emoji runs.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError

DIGIT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "digit_features.safetensors"
DIGIT_SIDE = 28
EMOJI_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "emoji_judge.safetensors"
EMOJI_SIDE, EMOJI_CLASSES, EMOJI_FEATURES = 32, 9, 256


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


class EmojiNet(nn.Module):
    """Three conv-conv-pool stages (32 -> 16 -> 8 -> 4), dense: 256 features, then ReLU and 9 logits."""

    def __init__(self):
        super().__init__()

        def stage(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                    nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*stage(3, 32), *stage(32, 64), *stage(64, 128),  # (B, 128, 4, 4)
                                      nn.Flatten(), nn.Linear(128 * 4 * 4, EMOJI_FEATURES))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(EMOJI_FEATURES, EMOJI_CLASSES))
        self.register_buffer("feature_mean", torch.zeros(EMOJI_FEATURES))
        self.register_buffer("feature_std", torch.ones(EMOJI_FEATURES))

    def forward(self, x: Tensor) -> Tensor:  # x in [-1, 1], (B, 3, 32, 32) -> (B, 9) logits
        return self.head(self.features(x))

    def embed(self, x: Tensor) -> Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> (B, 256) standardised features."""
        return (self.features(x) - self.feature_mean) / self.feature_std


def load_digit_net(weights: str | Path | None = None, device: str | torch.device = "cpu") -> DigitNet:
    """The trained DigitNet, from `weights` or the copy shipped with the package."""
    return _load(DigitNet(), weights, DIGIT_WEIGHTS, "benchmarks/train_digit_features.py", device)


def load_emoji_net(weights: str | Path | None = None, device: str | torch.device = "cpu") -> EmojiNet:
    """The trained EmojiNet, from `weights` or the copy shipped with the package."""
    return _load(EmojiNet(), weights, EMOJI_WEIGHTS, "benchmarks/train_emoji_judge.py", device)


def _load(net: nn.Module, weights: str | Path | None, shipped: Path, script: str, device) -> nn.Module:
    from safetensors.torch import load_file

    path = Path(weights) if weights else shipped
    if not path.is_file():
        raise DataError(f"{type(net).__name__} weights '{path}' do not exist" + ("" if weights else f"; rerun {script}"))
    try:
        net.load_state_dict(load_file(str(path)))
    except Exception as e:  # a foreign or truncated file: safetensors and torch raise various errors
        raise DataError(f"'{path}' does not hold {type(net).__name__} weights ({' '.join(str(e).split())[:200]})") from None
    return net.to(device).eval().requires_grad_(False)


def judge_accuracy(weights: Path = EMOJI_WEIGHTS) -> float | None:
    """The held-out accuracy a shipped judge's file records (its training script writes it)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        value = (f.metadata() or {}).get("held_out_accuracy")
    return float(value) if value is not None else None


def as_emoji_input(images: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) in [-1, 1] -> (B, 3, 32, 32), resized with antialiasing."""
    return _judge_input(images, 3, EMOJI_SIDE)


def as_digit_input(images: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) in [-1, 1] -> (B, 1, 28, 28): the luminance (its weights sum to 1, so [-1, 1]
    maps to [-1, 1]), resized with antialiasing."""
    return _judge_input(images, 1, DIGIT_SIDE)


def _judge_input(images: Tensor, channels: int, side: int) -> Tensor:
    from ..data.transforms import set_channels

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = set_channels(images.float(), channels)
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x
