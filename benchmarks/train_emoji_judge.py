"""Train the colour judge of `undiffuse eval` on the bundled emoji: which of the 9 categories an image is.

    python benchmarks/train_emoji_judge.py [--epochs 60] [--seed 0] [--out src/undiffuse/assets/emoji_judge.safetensors]

EmojiNet (undiffuse/eval/features.py) learns the categories of four fifths of the 1,906 bundled
emoji, drawn with the seed per category; the other fifth is held out and its accuracy on them is
printed and kept in the file's metadata (`features.judge_accuracy`). The training images are shifted
by up to 3 pixels and mirrored (the judge must read a category whatever its position and side,
since generated images are neither centred nor oriented like the originals). Its penultimate layer,
standardised by the training images' mean and std, is the feature space of FID/KID/precision/recall
for emoji runs. A few minutes on 2 CPU cores; the same seed gives the same weights on the same
machine and torch build.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from undiffuse.data import load_data
from undiffuse.eval.features import EMOJI_WEIGHTS, EmojiNet

HELD_OUT_SHARE = 0.2


def split(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) indices: a fifth of every category held out."""
    g = torch.Generator().manual_seed(seed)
    held, train = [], []
    for k in labels.unique().tolist():
        members = (labels == k).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        cut = round(HELD_OUT_SHARE * len(members))
        held.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(held).sort().values, torch.cat(train).sort().values


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to 3 pixels (edge-padded with white) and mirrored half of the time."""
    padded = F.pad(x, (3, 3, 3, 3), value=1.0)  # [-1, 1] images on white
    out = torch.empty_like(x)
    shifts = torch.randint(0, 7, (len(x), 2), generator=g).tolist()
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    flip = torch.rand(len(x), generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train_emoji_net(epochs: int = 60, seed: int = 0) -> tuple[EmojiNet, float]:
    """The trained network (eval mode) and its accuracy on the held-out real emoji."""
    data = load_data("emoji")
    _, train = split(data.labels, seed)
    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    net = EmojiNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * (len(train) // 64 + 1))
    for _ in range(epochs):
        net.train()
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            loss = F.cross_entropy(net(augment(data.images[idx], g)), data.labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        feats = torch.cat([net.features(x) for x in data.images[train].split(500)])
    net.feature_mean.copy_(feats.mean(0))
    net.feature_std.copy_(feats.std(0).clamp_min(1e-6))
    net.half().float()  # as it is stored (main): the accuracy recorded is the shipped weights'
    return net, held_out_accuracy(net, seed)


def held_out_accuracy(net: EmojiNet, seed: int = 0) -> float:
    data = load_data("emoji")
    test, _ = split(data.labels, seed)
    with torch.no_grad():
        return (net(data.images[test]).argmax(1) == data.labels[test]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(EMOJI_WEIGHTS))
    args = parser.parse_args()
    start = time.perf_counter()
    net, accuracy = train_emoji_net(args.epochs, args.seed)
    # half precision on disk (1.6 MB, not 3.3): a judge's decisions do not hang on the last bits
    state = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in net.state_dict().items()}
    held_out = len(split(load_data("emoji").labels, args.seed)[0])
    save_file(state, args.out, metadata={"epochs": str(args.epochs), "seed": str(args.seed),
                                         "held_out_accuracy": f"{accuracy:.4f}", "held_out_images": str(held_out)})
    print(f"held-out accuracy {accuracy:.4f} on {held_out} real emoji; {time.perf_counter() - start:.0f} s; "
          f"weights: {args.out}")


if __name__ == "__main__":
    main()
