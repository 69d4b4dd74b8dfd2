"""Train the offline digit feature network of `undiffuse eval` on the bundled MNIST digits.

    python benchmarks/train_digit_features.py [--epochs 12] [--seed 0] [--out src/undiffuse/assets/digit_features.safetensors]

DigitNet (undiffuse/features.py) learns to classify the 5,000 bundled digits; 500 of them, drawn
with the seed, are held out and its accuracy on them is printed. Its penultimate layer, standardised
by the training digits' mean and std, is the feature space of FID/KID/precision/recall for digit runs. About a minute on 2 CPU cores; the same
seed gives the same weights on the same machine and torch build.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from undiffuse.data import load_data
from undiffuse.eval.features import DIGIT_WEIGHTS, DigitNet

HELD_OUT = 500


def split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) indices into load_data("mnist")."""
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(seed))
    return order[:HELD_OUT], order[HELD_OUT:]


def train_digit_net(epochs: int = 12, seed: int = 0) -> tuple[DigitNet, float]:
    """The trained network (eval mode) and its accuracy on the held-out real digits."""
    data = load_data("mnist")
    _, train = split(seed)
    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(epochs):
        net.train()
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            # shifts of up to 2 pixels: generated digits are not always centred like MNIST's
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(data.images[idx], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(x), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        feats = torch.cat([net.features(x) for x in data.images[train].split(500)])
    net.feature_mean.copy_(feats.mean(0))
    net.feature_std.copy_(feats.std(0).clamp_min(1e-6))
    return net, held_out_accuracy(net, seed)


def held_out_accuracy(net: DigitNet, seed: int = 0) -> float:
    data = load_data("mnist")
    test, _ = split(seed)
    with torch.no_grad():
        return (net(data.images[test]).argmax(1) == data.labels[test]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DIGIT_WEIGHTS))
    args = parser.parse_args()
    start = time.perf_counter()
    net, accuracy = train_digit_net(args.epochs, args.seed)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, args.out, metadata={"epochs": str(args.epochs), "seed": str(args.seed),
                                         "held_out_accuracy": f"{accuracy:.4f}"})
    print(f"held-out accuracy {accuracy:.4f} on {HELD_OUT} real digits; "
          f"{time.perf_counter() - start:.0f} s; weights: {args.out}")


if __name__ == "__main__":
    main()
