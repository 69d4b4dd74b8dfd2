"""A run folder -> a diffusers folder (`export_run`), and a diffusers folder -> a run folder (`import_folder`).

    OUT/model_index.json, unet/, scheduler/   an unconditional run: DDPMPipeline.from_pretrained(OUT) loads it
    OUT/unet/, scheduler/                      a class-conditional run: UNet2DModel and DDPMScheduler, each
                                               with subfolder=...; class id K is the null class (guidance)
    OUT/undiffuse.json                         where it came from, the class names, the null id

Only safetensors are written and read (a pickle can run code when loaded). Each side is checked
against the other before anything is kept: the two networks' eps on random (x_t, t, class) must
agree to float tolerance, and the largest difference is returned. Both write into a temporary
folder beside OUT and rename it into place, so a failure leaves no half folder. diffusers is
imported here only, when a function runs.
"""
from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..conditions import Classes, Condition, one_hot
from ..errors import CheckpointError, UsageError
from ..generation import load_run
from ..parameterization import predictable
from ..run import MAX_T, Plan, RunRecord, read_run, write_run
from ..unet import UNet, require_network
from .staging import NOTE, check_out, staged
from .diffusers import (from_diffusers_state, prediction_of, scheduler_config, schedule_of,
                        to_diffusers_state, unet2d_config, unet_config_of)

UNET, SCHEDULER = "unet", "scheduler"
WEIGHTS, CONFIG_JSON, SCHEDULER_JSON = "diffusion_pytorch_model.safetensors", "config.json", "scheduler_config.json"
PICKLES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
TOLERANCE = 1e-4  # of the eps difference, relative to the largest eps: float32 round-off is ~1e-6


@dataclass
class Exchanged:
    out: Path
    max_eps_difference: float  # between the two networks on random (x_t, t, class)
    seconds: float
    classes: int  # 0 for an unconditional model


def require_diffusers():
    try:
        import diffusers
    except ImportError:
        raise UsageError("this needs diffusers, which is not installed: pip install diffusers") from None
    diffusers.utils.logging.set_verbosity_error()  # its notes on unused config keys are not the user's
    return diffusers


# --- export ------------------------------------------------------------------------------------------

def export_run(run: str | Path, out: str | Path, *, weights: str = "ema", overwrite: bool = False) -> Exchanged:
    """Write `run` as a diffusers folder at `out`; a UsageError when the run cannot be expressed."""
    start, run, out = time.perf_counter(), Path(run), Path(out)
    record = read_run(run)
    config = unet2d_config(record)  # refused before anything is loaded
    _check_class_ids(record)
    check_out(out, overwrite, "export", run)
    diffusers = require_diffusers()
    net = load_run(run, weights=weights).net
    unet = diffusers.UNet2DModel(**config)
    unet.load_state_dict(to_diffusers_state(net), strict=True)
    unet.eval()
    scheduler = diffusers.DDPMScheduler(**scheduler_config(record))
    difference = max_eps_difference(net, unet, record.schedule.T)
    with staged(out, overwrite) as tmp:
        _save(tmp, diffusers, unet, scheduler, record)
        (tmp / NOTE).write_text(json.dumps(_note(run, weights, record), indent=2) + "\n")
    return Exchanged(out, difference, time.perf_counter() - start, len(record.class_names))


def _save(folder: Path, diffusers, unet, scheduler, record: RunRecord) -> None:
    if record.class_names:  # DDPMPipeline cannot pass class ids: no model_index.json
        unet.save_pretrained(folder / UNET, safe_serialization=True)
        scheduler.save_pretrained(folder / SCHEDULER)
    else:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)


def _note(run: Path, weights: str, record: RunRecord) -> dict:
    from .. import __version__

    k = len(record.class_names)
    return {"exported_by": f"undiffuse {__version__}", "run": str(run.resolve()), "weights": weights,
            "class_names": list(record.class_names), "null_class": k if k else None,
            "prediction": record.prediction, "schedule": asdict(record.schedule)}


def _check_class_ids(record: RunRecord) -> None:
    """A class embedding takes one id per image: refuse a run trained on multi-hot or mixed contexts."""
    labels = record.train.get("labels")
    if not record.class_names or not isinstance(labels, str) or not Path(labels).is_file():
        return  # gone (or not a file: a FIFO would block): the table is exact for one-hot classes
    try:
        import numpy as np

        array = np.load(labels, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return  # gone: the exported table is exact for one-hot classes whatever the run saw
    if array.ndim == 2 and array.shape[1] > 1 and not (((array == 0) | (array == 1)).all() and (array.sum(1) == 1).all()):
        raise UsageError(f"this run was trained on context vectors ({labels}), not class ids; a diffusers "
                         "class embedding takes one id per image, so it cannot be exported")


@torch.no_grad()
def max_eps_difference(net: UNet, unet, T: int, n: int = 8, seed: int = 0) -> float:
    """The largest |eps| difference of our network and the UNet2DModel on the same random inputs,
    the null class among them; a RuntimeError (a bug, not bad input) beyond float tolerance."""
    g = torch.Generator().manual_seed(seed)
    cfg = net.cfg
    # Both networks are convolutional: a side of at most 64 checks every weight as well as the full one,
    # without the memory of 8 images of 1024 x 1024
    multiple = 2 ** (len(cfg.mults) - 1) * cfg.patch
    full = unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]
    size = max(multiple, min(full, 64) // multiple * multiple)
    x = torch.randn(n, cfg.channels, size, size, generator=g)
    t = torch.randint(0, T, (n,), generator=g)
    k = cfg.context_dim
    if k:
        labels = torch.cat([torch.randint(0, k, (n - 1,), generator=g), torch.tensor([k])])
        ours = net(x, t, Condition(Classes(one_hot(labels.clamp(max=k - 1), k), labels == k)))
        theirs = unet(x, t, class_labels=labels).sample
    else:
        ours, theirs = net(x, t), unet(x, t).sample
    difference = (ours - theirs).abs().max().item()
    if not difference <= TOLERANCE * max(1.0, ours.abs().max().item()):
        raise RuntimeError(f"the converted network differs from the original by {difference:g} in eps")
    return difference


# --- import ------------------------------------------------------------------------------------------

def import_folder(folder: str | Path, out: str | Path, *, overwrite: bool = False,
                  class_names: list[str] | None = None, data: str | None = None) -> Exchanged:
    """Write the UNet2DModel + scheduler of `folder` (save_pretrained's layout, or a DDPMPipeline's)
    as a run folder at `out`; a CheckpointError naming what undiffuse cannot express."""
    start, folder, out = time.perf_counter(), Path(folder), Path(out)
    if not folder.is_dir():
        raise CheckpointError(f"'{folder}' does not exist or is not a folder")
    check_out(out, overwrite, "import", folder)
    unet_dir, config = _unet_folder(folder)
    diffusers = require_diffusers()
    config = {**_defaults(diffusers.UNet2DModel), **config}
    cfg, size = unet_config_of(config, str(unet_dir / CONFIG_JSON))
    schedule, prediction = _schedule(folder, diffusers)  # refused before any weight is read
    require_network(cfg, f"the network of '{folder}'", copies=3)  # theirs, ours, and a state dict between
    _check_tensor_names(unet_dir, diffusers, config)
    unet = diffusers.UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True).eval()
    net = UNet(cfg).eval()
    net.load_state_dict(from_diffusers_state(cfg, net.state_dict(), unet.state_dict(), config["flip_sin_to_cos"]))
    difference = max_eps_difference(net, unet, schedule.T)
    record = RunRecord(unet=cfg, model_size="imported", schedule=schedule, prediction=prediction, image_size=size,
                       channels=cfg.channels, class_names=_names(folder, cfg.context_dim, class_names),
                       data_source=data or f"unknown (imported from {folder.resolve()})", num_images=1,
                       plan=Plan(steps=1, lr=1e-4, warmup=0, ema_decay=0.0),
                       train={"imported_from": str(folder.resolve())})
    with staged(out, overwrite) as tmp:
        _write_run_folder(tmp, record, net)
    return Exchanged(out, difference, time.perf_counter() - start, cfg.context_dim)


def _unet_folder(folder: Path) -> tuple[Path, dict]:
    """The UNet's folder and its config.json, checked before diffusers is imported."""
    unet_dir = folder / UNET if (folder / UNET).is_dir() else folder
    config = _read_json(unet_dir / CONFIG_JSON)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{unet_dir / CONFIG_JSON}: _class_name = {config['_class_name']!r} cannot be "
                              "expressed by undiffuse (it imports UNet2DModel, without cross-attention)")
    _require_safetensors(unet_dir)
    return unet_dir, config


def _write_run_folder(folder: Path, record: RunRecord, net: UNet) -> None:
    write_run(folder, record)
    for name in (ckpt.EMA, ckpt.MODEL):  # one set of weights: sampling and fine-tuning read the same
        ckpt.write_tensors(folder / name, net.state_dict(), step=0)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"'{path.parent}' is not a diffusers model folder (no {path.name})")
    return ckpt.read_json_object(path)


def _check_tensor_names(unet_dir: Path, diffusers, config: dict) -> None:
    """The weights hold exactly the tensors the config's UNet2DModel has: diffusers would leave a missing one
    at its random initial value (both networks would then share it, and the eps check could not tell)."""
    from safetensors import SafetensorError, safe_open

    with torch.device("meta"):
        expected = set(diffusers.UNet2DModel.from_config(config).state_dict())
    found = set()
    for shard in _weight_files(unet_dir):
        try:
            with safe_open(str(shard), framework="pt") as f:
                found.update(f.keys())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"'{shard}' cannot be read as safetensors ({e})") from None
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        what = f"missing {len(missing)} tensor(s), the first '{missing[0]}'" if missing else \
            f"{len(extra)} tensor(s) its config does not have, the first '{extra[0]}'"
        raise CheckpointError(f"'{unet_dir}': the weights do not match the config: {what}")


def _weight_files(unet_dir: Path) -> list[Path]:
    """The safetensors file, or the shards its index names: safetensors files inside the folder only (an
    index could name a pickled .bin, which diffusers would open, or a path elsewhere)."""
    single = unet_dir / WEIGHTS
    if single.is_file():
        return [single]
    index = ckpt.read_json_object(unet_dir / f"{WEIGHTS}.index.json")
    names = set((index.get("weight_map") or {}).values()) if isinstance(index.get("weight_map"), dict) else set()
    if not names:
        raise CheckpointError(f"'{unet_dir}': {WEIGHTS}.index.json has no weight_map")
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors") \
                or not (unet_dir / name).is_file():
            raise CheckpointError(f"'{unet_dir}': the index names {str(name)[:80]!r}; undiffuse reads safetensors "
                                  "files in the model's own folder only")
    return [unet_dir / name for name in sorted(names)]


def _require_safetensors(unet_dir: Path) -> None:
    if (unet_dir / WEIGHTS).is_file() or (unet_dir / f"{WEIGHTS}.index.json").is_file():
        return
    pickles = sorted(p.name for p in unet_dir.iterdir() if p.suffix in PICKLES)
    if pickles:
        raise CheckpointError(f"'{unet_dir}' holds only pickled weights ({pickles[0]}); undiffuse reads safetensors "
                              "only, since loading a pickle can run code: convert it to safetensors first")
    raise CheckpointError(f"'{unet_dir}' has no {WEIGHTS}")


def _defaults(cls) -> dict:
    """The constructor defaults, for keys a hand-written config.json leaves out."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _schedule(folder: Path, diffusers):
    """(ScheduleSpec, prediction) from the folder's scheduler config, read as a DDPMScheduler."""
    path = _scheduler_json(folder)
    config = _read_json(path)
    family = {"DDPMScheduler", *diffusers.DDPMScheduler._compatibles} - {"EDMEulerScheduler"}
    if config.get("_class_name", "DDPMScheduler") not in family:
        raise CheckpointError(f"{path}: _class_name = {config['_class_name']!r} cannot be expressed by undiffuse "
                              "(it reads the betas of DDPM-family schedulers)")
    T = config.get("num_train_timesteps", 1000)
    if not (type(T) is int and 2 <= T <= MAX_T):  # a run folder holds at most MAX_T steps: sample reads it back
        shown = f"<an integer of {T.bit_length()} bits>" if type(T) is int and T.bit_length() > 64 else repr(T)[:40]
        raise CheckpointError(f"{path}: num_train_timesteps = {shown} cannot be expressed by undiffuse (a whole "
                              f"number in [2, {MAX_T:,}])")
    try:
        scheduler = diffusers.DDPMScheduler.from_config(config)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    schedule = schedule_of(scheduler.betas, str(path))
    prediction = prediction_of(scheduler.config.prediction_type, str(path))
    if not predictable(prediction, schedule.zero_snr):
        raise CheckpointError(f"{path}: a zero-terminal-SNR schedule needs prediction_type v_prediction or sample")
    return schedule, prediction


def _scheduler_json(folder: Path) -> Path:
    """Beside the UNet (a pipeline's scheduler/, or the folder itself), or beside the unet/ folder given."""
    for path in (folder / SCHEDULER / SCHEDULER_JSON, folder / SCHEDULER_JSON, folder.parent / SCHEDULER / SCHEDULER_JSON):
        if path.is_file():
            return path
    raise CheckpointError(f"'{folder}' has no {SCHEDULER}/{SCHEDULER_JSON}: its betas and prediction are unknown")


def _names(folder: Path, k: int, given: list[str] | None) -> tuple[str, ...]:
    """--class-names, else the names undiffuse exported, else 0..K-1."""
    if given is not None:
        if len(given) != k:
            raise UsageError(f"{len(given)} class names for a model of {k} classes")
        return tuple(given)
    note = next((p for p in (folder / NOTE, folder.parent / NOTE) if p.is_file()), None)  # FOLDER or FOLDER/unet
    try:
        names = json.loads(note.read_text()).get("class_names") if note else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        names = None
    if isinstance(names, list) and len(names) == k and all(isinstance(n, str) for n in names):
        return tuple(names)
    return tuple(str(i) for i in range(k))


# --- the folder written ------------------------------------------------------------------------------

