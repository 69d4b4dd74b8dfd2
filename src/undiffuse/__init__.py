"""undiffuse: denoising diffusion models for your own images.

    import undiffuse as ud
    result = ud.train(ud.TrainConfig(data="mnist", minutes=10), "runs/digits")
    run = ud.load_run("runs/digits")
    images = ud.generate(run, 10, labels=list(range(10)), sampler="ddim", steps=50)
    ud.save_grid(images, "digits.png", nrow=10)
"""
from .conditioning import ContextEmbedding, denoiser, guided, one_hot
from .data import DataError, ImageData, load_data
from .generate import LoadedRun, generate, load_run, sample_images
from .samplers import (SAMPLERS, ddim, ddim_invert, ddpm, dpmpp_2m, dpmpp_3m, euler, euler_ancestral, heun,
                       karras_timesteps, sample, timesteps, unipc)
from .schedule import NoiseSchedule, cosine, linear, make_schedule, sigmoid, zero_terminal_snr
from .train import Result, TrainConfig, Trainer, train
from .unet import UNet, UNetConfig, count_parameters
from .viz import forward_strip, save_gif, save_grid, save_loss_curve

__version__ = "0.1.0"
