"""The classifiers that ship with undiffuse, as judges of a run's samples: does a sample asked to be
class k read as class k (fidelity)?

A judge fits a run whose classes are the judge's: the digit network (eval/features.py, DigitNet) for
runs on the bundled digits, the emoji network (EmojiNet) for runs on the bundled emoji's 9 categories.
Each judge's own accuracy on real images it never saw is the ceiling a run's fidelity is read
against (the digit judge reads 97.8% of held-out real digits right; the emoji judge's figure is in
its weights file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..data.emoji import emoji_index
from .features import (DIGIT_WEIGHTS, EMOJI_WEIGHTS, as_digit_input, as_emoji_input, judge_accuracy,
                       load_digit_net, load_emoji_net)


@dataclass(frozen=True)
class Judge:
    name: str  # the feature space of the same network (eval --features)
    load: Callable  # (weights, device) -> the network
    prepare: Callable[[Tensor], Tensor]  # images in [-1, 1] -> the network's input
    weights: Path

    def classes(self) -> tuple[str, ...]:
        if self.name == "digits":
            return tuple(str(d) for d in range(10))
        return tuple(sorted({e["category"] for e in emoji_index()["emoji"]}))

    def accuracy(self) -> float | None:
        """Its accuracy on held-out real images, as its training script recorded it."""
        return judge_accuracy(self.weights)


JUDGES = (Judge("digits", load_digit_net, as_digit_input, DIGIT_WEIGHTS),
          Judge("emoji", load_emoji_net, as_emoji_input, EMOJI_WEIGHTS))


def judge_for(class_names: tuple[str, ...]) -> Judge | None:
    """The judge whose classes are the run's, in the same order; None when no judge fits."""
    return next((j for j in JUDGES if class_names and j.classes() == tuple(class_names)), None)


def fidelity(judge: Judge, images: Tensor, labels: list[int], device: str | torch.device = "cpu",
             batch_size: int = 250) -> float:
    """The share of `images` (in [-1, 1]) that the judge reads as the class each was asked to be."""
    net = judge.load(None, device)
    right = 0
    with torch.inference_mode():
        for batch, wanted in zip(images.split(batch_size), torch.tensor(labels).split(batch_size)):
            right += (net(judge.prepare(batch.to(device))).argmax(1).cpu() == wanted).sum().item()
    return right / len(images)
