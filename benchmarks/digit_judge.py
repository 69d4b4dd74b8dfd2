"""A small CNN trained on the real bundled MNIST digits, to judge generated ones.

`judge()` returns the trained classifier and its accuracy on held-out real digits. Benchmarks use
it to count how many samples of digit k are recognised as k (fidelity), and its penultimate
features to measure diversity. Training takes about a minute on 2 CPU cores.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from undiffuse.data import load_data


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x):  # x in [-1, 1], (B, 1, 28, 28)
        return self.head(self.features(x))


def judge(epochs: int = 12, seed: int = 0, verbose: bool = True) -> tuple[DigitNet, float]:
    data = load_data("mnist")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data.images), generator=g)
    test, train = order[:500], order[500:]
    torch.manual_seed(seed)
    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            x = data.images[idx]
            # small random shifts make the judge robust to off-centre samples
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(x), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(data.images[test]).argmax(1) == data.labels[test]).float().mean().item()
    if verbose:
        print(f"judge: held-out accuracy on real digits {acc:.3f} ({time.time() - start:.0f} s)")
    return net, acc


@torch.no_grad()
def fidelity(net: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images classified as the digit they were asked to be."""
    return (net(images).argmax(1) == labels).float().mean().item()


@torch.no_grad()
def diversity(net: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the average per-feature std of the judge's features, relative to real digits'.

    1.0: as varied as the real digits of the same class; near 0: every sample of a class alike.
    """
    real = load_data("mnist")
    ratios = []
    for k in labels.unique().tolist():
        fake = net.features(images[labels == k]).std(0).mean()
        true = net.features(real.images[real.labels == k]).std(0).mean()
        ratios.append((fake / true).item())
    return sum(ratios) / len(ratios)
