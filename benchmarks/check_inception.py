"""Check undiffuse.inception against torch-fidelity's InceptionV3, layer names and outputs.

    pip download --no-deps torch-fidelity==0.4.0 -d /tmp/tf && cd /tmp/tf && unzip -q torch_fidelity-*.whl
    python benchmarks/check_inception.py /tmp/tf [--write-keys tests/data/inception_keys.txt]

torch-fidelity imports torchvision, which undiffuse does not use, so this script stubs torchvision
out (its Inception does not touch it), gives both networks the same random weights, and compares
their 2048 pool features on random 299 x 299 images. --write-keys records the reference parameter
names and shapes for tests/test_metrics.py. No weights or network access needed.
"""
from __future__ import annotations

import argparse
import sys
import types

import torch
from torch import nn

from undiffuse.eval.inception import FIDInception, as_inception_input


def _stub_torchvision() -> None:
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.datasets", "torchvision.models"):
        sys.modules[name] = types.ModuleType(name)
    datasets = sys.modules["torchvision.datasets"]
    datasets.CIFAR10 = datasets.STL10 = datasets.CIFAR100 = object


def random_state(net: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with non-trivial batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in net.state_dict().items():
        if not t.dtype.is_floating_point:
            state[name] = t.clone()
        elif "running_var" in name:
            state[name] = torch.rand(t.shape, generator=g) * 0.5 + 0.5
        else:
            state[name] = torch.randn(t.shape, generator=g) * 0.1
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torch_fidelity_dir", help="a folder holding the unpacked torch_fidelity package")
    parser.add_argument("--write-keys", default=None, metavar="FILE.txt")
    args = parser.parse_args()
    _stub_torchvision()
    sys.path.insert(0, args.torch_fidelity_dir)
    import torch_fidelity.feature_extractor_inceptionv3 as reference

    ours = FIDInception().eval()
    state = random_state(ours)
    ours.load_state_dict(state)
    reference.load_state_dict_from_url = lambda *a, **k: state  # instead of downloading the real weights
    theirs = reference.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    print("same parameter names and shapes:", shapes == {k: tuple(v.shape) for k, v in state.items()})
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(images)[0]
        got = ours.pool_features(as_inception_input(images.float() / 127.5 - 1))
    print(f"pool features: max |difference| {(expected - got).abs().max().item():.2e}, "
          f"max |value| {expected.abs().max().item():.2e}")
    if args.write_keys:
        with open(args.write_keys, "w") as f:
            f.write("# parameter names and shapes of torch-fidelity's FeatureExtractorInceptionV3 "
                    "(benchmarks/check_inception.py)\n")
            f.writelines(f"{k} {','.join(map(str, s))}\n" for k, s in shapes.items())
        print(f"reference names: {args.write_keys}")


if __name__ == "__main__":
    main()
