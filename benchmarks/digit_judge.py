"""The digit classifier that ships with undiffuse (features.DigitNet), used to judge generated digits.

`judge()` returns the trained classifier and its accuracy on the held-out real digits of
train_digit_features.py, which trained it. Benchmarks use it to count how many samples of digit k
are recognised as k (fidelity), and its features to measure diversity.
"""
from __future__ import annotations

import torch

from train_digit_features import held_out_accuracy
from undiffuse.data import load_data
from undiffuse.eval.features import DigitNet, as_digit_input, load_digit_net


def judge(verbose: bool = True) -> tuple[DigitNet, float]:
    net = load_digit_net()
    accuracy = held_out_accuracy(net)
    if verbose:
        print(f"judge: held-out accuracy on real digits {accuracy:.3f}")
    return net, accuracy


@torch.no_grad()
def fidelity(net: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images classified as the digit they were asked to be."""
    return (net(as_digit_input(images)).argmax(1) == labels).float().mean().item()


@torch.no_grad()
def diversity(net: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the average per-feature std of the judge's features, relative to real digits'.

    1.0: as varied as the real digits of the same class; near 0: every sample of a class alike.
    """
    real = load_data("mnist")
    ratios = []
    for k in labels.unique().tolist():
        fake = net.embed(as_digit_input(images[labels == k])).std(0).mean()
        true = net.embed(real.images[real.labels == k]).std(0).mean()
        ratios.append((fake / true).item())
    return sum(ratios) / len(ratios)
