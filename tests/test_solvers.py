"""The ODE samplers against the probability-flow ODE solved accurately, for data whose denoiser is
exact: a mixture of three 2-D Gaussians (curved flow) and one correlated Gaussian."""
import math

import pytest
import torch

from undiffuse.samplers import (ddim, ddim_invert, euler, euler_ancestral, karras_sigmas, karras_timesteps, sample,
                                timesteps)
from undiffuse.schedule import SCHEDULES, NoiseSchedule, linear, make_schedule

from gaussian import Mixture

MIXTURE = Mixture([0.5, 0.3, 0.2], [[-1.0, 0.5], [1.0, 0.0], [0.0, -1.2]],
                  [[[0.10, 0.02], [0.02, 0.05]], [[0.04, 0.0], [0.0, 0.12]], [[0.06, -0.03], [-0.03, 0.06]]])
GAUSSIAN = Mixture([1.0], [[0.3, -0.2]], [[[0.20, 0.12], [0.12, 0.15]]])
ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp-2m": 2, "dpmpp-3m": 3,
          "unipc": 3,  # UniP-2 corrected by UniC-2: one order above its predictor
          "ipndm": 2}  # fixed 4th-order weights on steps uneven in sigma: 2nd order (test_ipndm.py)
GRIDS = (81, 161, 321)


def log_snr_uniform(T=3201, lam_max=5.0, lam_min=-5.0):
    """A schedule whose lambda = log(a / s) falls linearly in t, so that grids uniform in t are
    uniform in lambda and the steps shrink everywhere as their number doubles: the asymptotic
    order then shows. T - 1 = 3200 makes nested grids of 81, 161 and 321 points ending at t = 0.
    (Near t = 0 the linear schedule's lambda runs off like -log t / 2, so its last steps never get
    small on uniform grids.)"""
    lam = torch.linspace(lam_max, lam_min, T, dtype=torch.float64)
    alpha_bar = torch.sigmoid(2 * lam)
    return NoiseSchedule(1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]]))


def _noise(n, seed=0):
    return torch.randn(n, 1, 1, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(data, schedule, x):
    """Where the exact flow takes x from t = T-1 to t = 0, then the final step to the clean image,
    which every sampler takes with the denoiser itself: x0 = D(x_0)."""
    sigmas = schedule.sigmas
    x_0 = data.flow(x, sigmas[-1].item(), sigmas[0].item(), steps=1000)  # RK4 error ~1e-11
    ab = schedule.alpha_bar[0].item()
    return data.x0(x_0, math.sqrt(ab), math.sqrt(1 - ab))


def _rms(a, b):
    return (a - b).pow(2).mean().sqrt().item()


@pytest.fixture(scope="module", params=["gaussian", "mixture"])
def fine_problem(request):
    data = {"gaussian": GAUSSIAN, "mixture": MIXTURE}[request.param]
    schedule = log_snr_uniform()
    x = _noise(64)
    return data, schedule, x, _reference(data, schedule, x)


@pytest.mark.parametrize("name", ORDERS)
def test_each_deterministic_solver_converges_at_its_order(name, fine_problem):
    """Twice the steps divide the error by 2^order; the slope is fitted on fine grids, where the
    asymptotic order shows. For a single Gaussian the flow is affine; for the mixture it bends."""
    data, schedule, x, ref = fine_problem
    denoise = data.denoise(schedule)
    errors = [_rms(sample(name, denoise, schedule, x, steps=n, spacing="linspace"), ref) for n in GRIDS]
    slopes = [math.log2(errors[k] / errors[k + 1]) for k in range(len(errors) - 1)]
    assert errors[-1] < 0.01, errors
    if data is MIXTURE:
        assert slopes[-1] == pytest.approx(ORDERS[name], abs=0.2), (errors, slopes)
    else:  # an affine denoiser can make the leading error term vanish: at least the order
        assert min(slopes) > ORDERS[name] - 0.2, (errors, slopes)


def test_multistep_solvers_beat_ddim_at_the_same_network_calls():
    """On the linear schedule with the default (trailing) spacing, as users run them: the reference
    ends where the grid ends, then takes the same final step to the clean image."""
    schedule = linear(1000)
    x = _noise(64, seed=1)
    denoise = MIXTURE.denoise(schedule)
    for calls in (20, 40):
        t_end = timesteps(1000, calls)[-1]
        x_end = MIXTURE.flow(x, schedule.sigmas[-1].item(), schedule.sigmas[t_end].item(), steps=300)
        ab = schedule.alpha_bar[t_end].item()
        ref = MIXTURE.x0(x_end, math.sqrt(ab), math.sqrt(1 - ab))
        err = {name: _rms(sample(name, denoise, schedule, x, steps=calls), ref) for name in ("ddim", "dpmpp-2m")}
        assert err["dpmpp-2m"] < err["ddim"] / 1.8, (calls, err)


def test_euler_is_ddim_written_in_another_coordinate():
    schedule = linear(1000)
    x = _noise(64)
    denoise, grid = MIXTURE.denoise(schedule), timesteps(1000, 30)
    assert torch.allclose(euler(denoise, schedule, x, grid), ddim(denoise, schedule, x, grid), atol=1e-10)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = euler_ancestral(denoise, schedule, x, grid, generator=g())
    b = ddim(denoise, schedule, x, grid, eta=1.0, generator=g())
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name,steps", [("euler-a", 250), ("ddpm", None)])
def test_ancestral_samplers_reproduce_the_data_mean_and_covariance(name, steps):
    schedule = linear(1000)
    x = _noise(8000, seed=2)
    out = sample(name, GAUSSIAN.denoise(schedule), schedule, x, steps=steps,
                 generator=torch.Generator().manual_seed(3)).reshape(-1, 2)
    assert torch.allclose(out.mean(0), GAUSSIAN.mean(), atol=0.015)
    assert torch.allclose(torch.cov(out.T), GAUSSIAN.covariance(), atol=0.012)


def test_deterministic_solvers_reproduce_the_mixture():
    """Samples of the ODE solvers follow the data: mixture mean and covariance at 25 steps."""
    schedule = linear(1000)
    x = _noise(8000, seed=4)
    denoise = MIXTURE.denoise(schedule)
    for name in ("dpmpp-2m", "dpmpp-3m", "unipc", "heun"):
        out = sample(name, denoise, schedule, x, steps=25).reshape(-1, 2)
        assert torch.allclose(out.mean(0), MIXTURE.mean(), atol=0.03), name
        assert torch.allclose(torch.cov(out.T), MIXTURE.covariance(), atol=0.03), name


def test_ddim_inversion_round_trip():
    schedule = linear(1000)
    denoise = MIXTURE.denoise(schedule)
    images = MIXTURE.sample(256, torch.Generator().manual_seed(6))
    errors = {}
    for steps in (50, 200):
        grid = timesteps(1000, steps)
        latent = ddim_invert(denoise, schedule, images, grid)
        errors[steps] = _rms(ddim(denoise, schedule, latent, grid), images)
    assert errors[50] < 0.05, errors  # the data spread over about 2
    assert errors[200] < errors[50] / 3, errors
    assert latent.std().item() == pytest.approx(1.0, abs=0.15)  # the images became noise


def test_karras_sigmas_follow_eq_5():
    sig = karras_sigmas(0.01, 80.0, 5, rho=7.0)
    ramp = torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    expected = (80 ** (1 / 7) + ramp * (0.01 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(sig, expected)
    assert sig[0].item() == pytest.approx(80.0) and sig[-1].item() == pytest.approx(0.01)


def test_karras_timesteps_are_distinct_steps_near_karras_levels():
    s = linear(1000)
    for steps in (5, 20, 100, 400):
        ts = karras_timesteps(s, steps)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
    ts = karras_timesteps(s, 10)
    wanted = karras_sigmas(s.sigmas[0].item(), s.sigmas[-1].item(), 10)
    got = s.sigmas[ts]
    assert torch.allclose(got.log(), wanted.log(), atol=0.1)  # within a step's worth of log sigma
    assert timesteps(1000, 10, "karras", s) == ts
    with pytest.raises(ValueError, match="schedule"):
        timesteps(1000, 10, "karras")


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_zero_terminal_snr_schedules_sample_from_pure_noise(prediction):
    """With no signal left at T-1, the first step must still produce the data: exercise every sampler
    with the exact denoiser given as the network would give it (v or x0, converted by
    parameterization.to_eps_x0, as guidance.denoiser converts a network's output)."""
    from undiffuse.parameterization import to_eps_x0

    s = make_schedule("linear", 1000, zero_snr=True)
    x = _noise(4000, seed=8)

    def denoise(x_t, t):
        ab = s.alpha_bar[int(t[0])].item()
        x0 = GAUSSIAN.x0(x_t, math.sqrt(ab), math.sqrt(1 - ab))
        eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        pred = x0 if prediction == "x0" else s.v_target(x0, t, eps)
        return to_eps_x0(pred, x_t, t, s, prediction)

    for name, steps in (("ddim", 100), ("dpmpp-2m", 30), ("unipc", 30), ("heun", 30)):
        out = sample(name, denoise, s, x, steps=steps).reshape(-1, 2)
        assert torch.allclose(out.mean(0), GAUSSIAN.mean(), atol=0.03), name
        assert torch.allclose(torch.cov(out.T), GAUSSIAN.covariance(), atol=0.03), name


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("name", SCHEDULES)
def test_karras_timesteps_fit_every_schedule(name, zero_snr):
    """Cosine, sigmoid and zero-SNR schedules jump by orders of magnitude in sigma over their last
    steps, so Karras' top levels snap onto the same steps; they are pushed apart, never past T-1."""
    s = make_schedule(name, 1000, zero_snr)
    for steps in (1, 2, 5, 10, 20, 100, 500, 900, 990, 998, 999, 1000):
        ts = karras_timesteps(s, steps)
        assert len(ts) == steps and ts[0] == 999 and all(a > b for a, b in zip(ts, ts[1:])), (steps, ts[:5])
        assert ts[-1] == (0 if steps > 1 else 999)
        assert timesteps(1000, steps, "karras", s) == ts
    assert karras_timesteps(s, 1000) == list(range(999, -1, -1))
    ts = karras_timesteps(s, 20)
    wanted = karras_sigmas(s.sigmas[0].item(), s.sigmas[-1].item(), 20)
    low = s.sigmas[ts] < 10  # where the steps are dense, they land on Karras' levels
    assert torch.allclose(s.sigmas[ts][low].log(), wanted[low].log(), atol=0.1)


def test_karras_timesteps_start_from_the_largest_finite_sigma():
    """A schedule whose last step holds no signal at all has an infinite sigma there (NoiseSchedule
    stops at an SNR of 1e-9, but the grid does not rely on it): the levels start from the largest
    finite sigma, and T-1 stays the first step."""
    from undiffuse.grids import _karras_steps

    finite = linear(100).sigmas[:-1]
    ts = _karras_steps(torch.cat([finite, torch.tensor([math.inf], dtype=torch.float64)]), 10)
    assert ts[0] == 99 and ts[1:] == _karras_steps(finite, 10)[1:]


def test_karras_grid_of_the_first_steps_of_a_schedule():
    """img2img starts at t0 < T-1: the grid of the schedule's first t0 + 1 steps."""
    s = linear(1000)
    assert timesteps(300, 10, "karras", s) == karras_timesteps(NoiseSchedule(s.betas[:300]), 10)
    with pytest.raises(ValueError, match="schedule"):
        timesteps(1001, 10, "karras", s)


@pytest.mark.parametrize("zero_snr", [False, True])
def test_heun_stays_in_range_from_the_top_of_the_cosine_schedule(zero_snr):
    """From sigma ~2e4 down to ~6 in one step, an unguarded trapezoid sent samples to |x| ~ 20 (the
    Gaussian's own reach here is ~1.9); with the guard (ode._corrected) heun matches the data at 10
    steps and is as close to a fine DDIM run as at 25 steps on the linear schedule."""
    s = make_schedule("cosine", 1000, zero_snr)
    x = _noise(4000, seed=9)
    denoise = GAUSSIAN.denoise(s)
    out = sample("heun", denoise, s, x, steps=10).reshape(-1, 2)
    assert out.abs().max().item() < 2.0
    assert torch.allclose(out.mean(0), GAUSSIAN.mean(), atol=0.03)
    assert torch.allclose(torch.cov(out.T), GAUSSIAN.covariance(), atol=0.03)
    fine = sample("ddim", denoise, s, x, steps=200).reshape(-1, 2)
    assert _rms(out, fine) < 0.04
