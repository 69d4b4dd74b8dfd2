"""UniPC against the implementation most people run: diffusers' UniPCMultistepScheduler (bh2, data
prediction, order 2, lower order at the last step), driven by the same exact denoiser of a Gaussian
mixture from the same noise over the same steps. Its order is checked in test_solvers.py."""
import math

import pytest
import torch

from undiffuse.samplers import dpmpp_2m, timesteps, unipc
from undiffuse.schedule import NoiseSchedule, cosine, linear

from test_solvers import MIXTURE, _noise


def _diffusers_unipc(schedule, eps_fn, x, steps, **betas):
    """diffusers' loop: one model call and one scheduler step per timestep, in float32 as it runs."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(num_train_timesteps=schedule.T, solver_order=2, solver_type="bh2",
                                        predict_x0=True, prediction_type="epsilon", thresholding=False,
                                        lower_order_final=True, timestep_spacing="trailing",
                                        final_sigmas_type="zero", **betas)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == timesteps(schedule.T, steps)  # the same grid as ours
    x = x.float()
    for t in scheduler.timesteps:
        eps = eps_fn(x, torch.full((len(x),), int(t)))
        x = scheduler.step(eps, t, x).prev_sample
    return x.double()


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_unipc_matches_diffusers_on_the_linear_schedule(steps):
    schedule = linear(1000)  # diffusers' "linear": betas from 1e-4 to 0.02
    eps_fn = MIXTURE.eps_fn(schedule)
    x = _noise(64)
    theirs = _diffusers_unipc(schedule, eps_fn, x, steps, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    denoise, grid = MIXTURE.denoise(schedule), timesteps(1000, steps)
    ours = unipc(denoise, schedule, x, grid)
    assert (ours - theirs).abs().max().item() < 1e-5  # float32 rounding over the steps; samples reach ~2
    # and the comparison can tell solvers apart: DPM-Solver++(2M), UniPC without its corrector, is far off
    assert (dpmpp_2m(denoise, schedule, x, grid) - theirs).abs().max().item() > 1e-3


def test_unipc_matches_diffusers_on_other_betas():
    """Cosine betas handed over as they are, cut at step 900: near its end (alpha_bar ~ 1e-9) float32
    cannot carry x0 = (x - s eps) / a, and float32 runs of either sampler drift apart by ~1e-3 there."""
    schedule = NoiseSchedule(cosine(1000).betas[:900])
    eps_fn = MIXTURE.eps_fn(schedule)
    x = _noise(64, seed=3)
    theirs = _diffusers_unipc(schedule, eps_fn, x, 10, trained_betas=schedule.betas.numpy())
    ours = unipc(MIXTURE.denoise(schedule), schedule, x, timesteps(schedule.T, 10))
    assert (ours - theirs).abs().max().item() < 1e-5


def test_unipc_makes_one_network_call_a_step_and_reports_it():
    schedule = linear(1000)
    denoise = MIXTURE.denoise(schedule)
    calls, seen = [], []

    def counted(x_t, t):
        calls.append(int(t[0]))
        return denoise(x_t, t)

    out = unipc(counted, schedule, _noise(8), timesteps(1000, 12), callback=lambda d: seen.append((d["t"], d["x0"])))
    assert calls == timesteps(1000, 12) == [t for t, _ in seen]
    assert torch.equal(out, seen[-1][1])  # the last step lands on the last clean-image prediction
    assert all(math.isfinite(x0.abs().max().item()) for _, x0 in seen)
