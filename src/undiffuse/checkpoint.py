"""A run folder on disk, and nothing that loading it could execute.

    RUN/config.json              what the run is: model, schedule, data, recipe, class names
    RUN/model.safetensors        the raw weights
    RUN/ema.safetensors          the EMA weights (what sampling uses)
    RUN/train_state.safetensors  optimizer moments, step and RNG state, for --resume

Every file is written to a temporary name and renamed over the old one, so a crash leaves either
the old or the new file, never half of one. Each weight file records the step it belongs to, so a
crash between two files is detected instead of silently resuming a mixed state.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

CONFIG, MODEL, EMA, STATE = "config.json", "model.safetensors", "ema.safetensors", "train_state.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A run folder that cannot be used; the message is one line for the user."""


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give them the usual permissions
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_config(run: Path, config: dict) -> None:
    config = {"format_version": FORMAT_VERSION, **config}
    atomic_write(run / CONFIG, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))


def load_config(run: Path) -> dict:
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"run folder '{run}' does not exist")
    path = run / CONFIG
    if not path.is_file():
        raise CheckpointError(f"'{run}' is not an undiffuse run folder (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by an incompatible version of undiffuse")
    return config


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], step: int) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"step": str(step)}))


def saved_step(path: Path) -> int:
    """The step a weight file was saved at, read from its header alone (-1 when absent)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("step", -1))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors and the step they were saved at. safetensors holds raw arrays only: no code runs."""
    step = saved_step(path)
    try:
        return load_file(str(path)), step
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_weights(model: torch.nn.Module, path: Path) -> int:
    """Load a weight file into `model`, which must have exactly its shapes; returns the step."""
    tensors, step = load_tensors(path)
    own = model.state_dict()
    if set(tensors) != set(own) or any(tensors[k].shape != own[k].shape for k in own):
        raise CheckpointError(f"{path} does not fit the model described by config.json")
    model.load_state_dict(tensors)
    return step


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq) for safetensors."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"opt.{index}.{key}"] = torch.as_tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)
