"""Editing with a trained model, without retraining: inpainting, outpainting, image-to-image, interpolation, super-resolution.

Two levels in each module:
- over any denoise(x_t, t) -> (eps, x0) and NoiseSchedule, as the samplers take them (so that the exact
  denoiser of Gaussian data can check them): `inpaint_walk` with `replace_moves` or `repaint_moves`, which
  runs the samplers' walk with DDIM's step, `sdedit`, which cuts a sampler's timesteps at t0, `slerp`;
- over a loaded run (`generation.load_run`): `inpaint`, `outpaint`, `img2img`, `interpolate` (and `upscale`
  for an upscale run), told what to draw and guided exactly as `generation.generate` is.
"""
from .inpaint import (DEFAULT_JUMP, DEFAULT_RESAMPLE, DEFAULT_STEPS, METHODS, inpaint, inpaint_moves, inpaint_walk,
                      network_calls, outpaint, renoise, repaint_moves, replace_moves)
from .interpolate import interpolate, slerp
from .masks import load_mask, mask_from_picture
from .sdedit import img2img, sdedit, sdedit_plan
from .upscale import comparison, low_res_picture, upscale

__all__ = ["DEFAULT_JUMP", "DEFAULT_RESAMPLE", "DEFAULT_STEPS", "METHODS", "comparison", "img2img", "inpaint", "inpaint_moves",
           "inpaint_walk", "interpolate", "load_mask", "low_res_picture", "mask_from_picture", "network_calls", "outpaint", "renoise", "repaint_moves",
           "replace_moves", "sdedit", "sdedit_plan", "slerp", "upscale"]
