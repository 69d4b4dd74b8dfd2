"""undiffuse: denoising diffusion models for your own images.

    import undiffuse as ud
    result = ud.train(ud.TrainConfig.flat(data="mnist", minutes=10), "runs/digits")
    run = ud.load_run("runs/digits")
    images = ud.generate(run, 10, labels=list(range(10)), sampler="ddim", steps=50)
    ud.save_grid(images, "digits.png", nrow=10)

`import undiffuse` loads nothing heavy: each name below is imported from its module when first used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it (ARCHITECTURE.md lists what each module owns)
_EXPORTS = {
    "UndiffuseError": "errors", "UsageError": "errors", "DataError": "errors", "CheckpointError": "errors",
    "TrainingDiverged": "errors",
    "NoiseSchedule": "schedule", "cosine": "schedule", "linear": "schedule", "make_schedule": "schedule",
    "sigmoid": "schedule", "zero_terminal_snr": "schedule",
    "timesteps": "grids", "karras_timesteps": "grids",
    "ContextEmbedding": "conditions", "one_hot": "conditions", "parse_context": "conditions", "class_id": "conditions",
    "UNet": "unet", "UNetConfig": "unet", "count_parameters": "unet",
    "denoiser": "guidance", "from_eps": "guidance", "guided": "guidance",
    "REGISTRY": "samplers", "SAMPLERS": "samplers", "sample": "samplers", "ddim": "samplers", "ddim_invert": "samplers",
    "ddpm": "samplers", "dpmpp_2m": "samplers", "dpmpp_3m": "samplers", "euler": "samplers",
    "euler_ancestral": "samplers", "heun": "samplers", "unipc": "samplers",
    "LoadedRun": "generation", "generate": "generation", "load_run": "generation", "sample_images": "generation",
    "ImageData": "data", "load_data": "data", "load_image": "data",
    "Result": "training", "TrainConfig": "training", "Trainer": "training", "train": "training",
    "diffusion_loss": "training",
    "forward_strip": "viz", "save_gif": "viz", "save_grid": "viz", "save_loss_curve": "viz",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'undiffuse' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
