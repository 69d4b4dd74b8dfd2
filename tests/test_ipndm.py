"""iPNDM and its variable-step form: the weights against closed-form integrals, the order each form
reaches, the published algorithm written out again in EDM's own coordinates, and the fewer calls it
needs than DDIM. (No library on PyPI runs iPNDM on a given schedule: diffusers' IPNDMScheduler is
Adams-Bashforth in v-diffusion's angle on its own trigonometric schedule, another method.)"""
import math
import random

import pytest
import torch

from undiffuse.samplers import ddim, ipndm, ipndm_v, sample, timesteps
from undiffuse.samplers.ipndm import FIXED_WEIGHTS, variable_weights
from undiffuse.schedule import NoiseSchedule, linear, make_schedule

from test_solvers import GAUSSIAN, MIXTURE, _noise, _reference, _rms, log_snr_uniform


def test_on_equal_steps_the_variable_weights_are_adams_bashforths():
    for k, fixed in enumerate(FIXED_WEIGHTS, 1):
        sigmas = [1.0 + 0.1 * j for j in range(k)]
        assert variable_weights(sigmas, -0.1) == pytest.approx(fixed, abs=1e-12)


def test_the_variable_weights_integrate_every_polynomial_through_the_nodes_exactly():
    """sum_j w_j p(sigma_j) = (1/h) integral of p over the step, for every p of degree < k, on uneven nodes."""
    rng = random.Random(0)
    for k in range(1, 5):
        for _ in range(20):
            sigmas = sorted(rng.uniform(0.1, 5.0) for _ in range(k))  # newest, the lowest, first
            sigma, h = sigmas[0], -rng.uniform(0.01, sigmas[0])
            weights = variable_weights(sigmas, h)
            for power in range(k):
                exact = ((sigma + h) ** (power + 1) - sigma ** (power + 1)) / (power + 1) / h
                assert sum(w * s ** power for w, s in zip(weights, sigmas)) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("data", [GAUSSIAN, MIXTURE], ids=["gaussian", "mixture"])
def test_the_variable_step_form_converges_at_fourth_order_where_the_fixed_one_keeps_second(data):
    """On a grid uniform in log-SNR (uneven in sigma): twice the steps divide ipndm-v's error by close to
    2^4 and rising (its first, Euler, step sits where the flow is nearly straight), ipndm's by 2^2 (the
    fixed weights' error is the steps' change, which is second order on a smooth grid)."""
    schedule, x = log_snr_uniform(), _noise(64)
    ref = _reference(data, schedule, x)
    denoise = data.denoise(schedule)
    errors = {name: [_rms(sample(name, denoise, schedule, x, steps=n, spacing="linspace"), ref) for n in (81, 161, 321)]
              for name in ("ipndm", "ipndm-v")}
    slopes = {name: [math.log2(e[k] / e[k + 1]) for k in range(2)] for name, e in errors.items()}
    assert 3.5 < slopes["ipndm-v"][0] < slopes["ipndm-v"][1] < 4.3, slopes
    assert slopes["ipndm"][1] == pytest.approx(2, abs=0.2), slopes
    assert errors["ipndm-v"][-1] < errors["ipndm"][-1] / 5


def _edm_ipndm(schedule, x, grid):
    """Zhang & Chen's iPNDM as EDM writes samplers: unscaled z = x / a at noise level sigma, the slope
    d = (z - D(z; sigma)) / sigma from the denoiser D = E[x0 | z], fixed Adams-Bashforth weights up to
    4th order, and D itself at the last step to sigma = 0."""
    sigma = lambda t: math.sqrt(1 / schedule.alpha_bar[t].item() - 1)  # noqa: E731
    z, slopes = x * math.sqrt(1 + sigma(grid[0]) ** 2), []
    for i, t in enumerate(grid):
        s = sigma(t)
        D = MIXTURE.x0(z / math.sqrt(1 + s * s), 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s))
        if i == len(grid) - 1:
            return D
        slopes = [(z - D) / s] + slopes[:3]
        d = [slopes[0],
             (3 * slopes[0] - slopes[1]) / 2 if len(slopes) > 1 else None,
             (23 * slopes[0] - 16 * slopes[1] + 5 * slopes[2]) / 12 if len(slopes) > 2 else None,
             (55 * slopes[0] - 59 * slopes[1] + 37 * slopes[2] - 9 * slopes[3]) / 24 if len(slopes) > 3 else None,
             ][len(slopes) - 1]
        s_next = sigma(grid[i + 1])
        z = z + (s_next - s) * d


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_ipndm_is_the_published_algorithm_in_edms_coordinates(steps):
    schedule, x = linear(1000), _noise(64, seed=2)
    grid = timesteps(1000, steps)
    ours = ipndm(MIXTURE.denoise(schedule), schedule, x, grid)
    assert torch.allclose(ours, _edm_ipndm(schedule, x, grid), atol=1e-9)


def test_first_order_is_ddim_and_the_order_keyword_is_checked():
    schedule, x = linear(1000), _noise(64, seed=3)
    denoise, grid = MIXTURE.denoise(schedule), timesteps(1000, 12)
    plain = ddim(denoise, schedule, x, grid)
    assert torch.allclose(ipndm(denoise, schedule, x, grid, order=1), plain, atol=1e-10)
    assert torch.allclose(ipndm_v(denoise, schedule, x, grid, order=1), plain, atol=1e-10)
    assert not torch.allclose(ipndm(denoise, schedule, x, grid, order=2), plain, atol=1e-4)
    with pytest.raises(ValueError, match="order"):
        ipndm(denoise, schedule, x, grid, order=5)


@pytest.mark.parametrize("name", ["ipndm", "ipndm-v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_at_ten_calls_ipndm_is_closer_to_the_flow_than_ddim(name, schedule):
    """As users run it (trailing spacing, 10 steps): nearer a 500-step DDIM solve than DDIM at 10."""
    s, x = make_schedule(schedule, 1000), _noise(2000, seed=9)
    denoise = MIXTURE.denoise(s)
    fine = sample("ddim", denoise, s, x, steps=500)
    ours, plain = (_rms(sample(n, denoise, s, x, steps=10), fine) for n in (name, "ddim"))
    assert ours < plain / 1.2, (ours, plain)
