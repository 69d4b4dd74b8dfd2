"""The ODE samplers against the probability-flow ODE solved accurately, for data whose denoiser is
exact: a mixture of three 2-D Gaussians (curved flow) and one correlated Gaussian."""
import math

import pytest
import torch

from undiffuse.samplers import (SAMPLERS, ddim, ddim_invert, euler, euler_ancestral, karras_sigmas,
                                karras_timesteps, network_calls, sample, timesteps)
from undiffuse.schedule import NoiseSchedule, linear, make_schedule

from gaussian import Mixture

MIXTURE = Mixture([0.5, 0.3, 0.2], [[-1.0, 0.5], [1.0, 0.0], [0.0, -1.2]],
                  [[[0.10, 0.02], [0.02, 0.05]], [[0.04, 0.0], [0.0, 0.12]], [[0.06, -0.03], [-0.03, 0.06]]])
GAUSSIAN = Mixture([1.0], [[0.3, -0.2]], [[[0.20, 0.12], [0.12, 0.15]]])
ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp-2m": 2, "dpmpp-3m": 3,
          "unipc": 3}  # UniP-2 corrected by UniC-2: one order above its predictor
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
    eps_fn = data.eps_fn(schedule)
    errors = [_rms(sample(name, eps_fn, schedule, x, steps=n, spacing="linspace"), ref) for n in GRIDS]
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
    eps_fn = MIXTURE.eps_fn(schedule)
    for calls in (20, 40):
        t_end = timesteps(1000, calls)[-1]
        x_end = MIXTURE.flow(x, schedule.sigmas[-1].item(), schedule.sigmas[t_end].item(), steps=300)
        ab = schedule.alpha_bar[t_end].item()
        ref = MIXTURE.x0(x_end, math.sqrt(ab), math.sqrt(1 - ab))
        err = {name: _rms(sample(name, eps_fn, schedule, x, steps=calls), ref) for name in ("ddim", "dpmpp-2m")}
        assert err["dpmpp-2m"] < err["ddim"] / 1.8, (calls, err)


def test_euler_is_ddim_written_in_another_coordinate():
    schedule = linear(1000)
    x = _noise(64)
    eps_fn = MIXTURE.eps_fn(schedule)
    assert torch.allclose(euler(eps_fn, schedule, x, steps=30), ddim(eps_fn, schedule, x, steps=30), atol=1e-10)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = euler_ancestral(eps_fn, schedule, x, steps=30, generator=g())
    b = ddim(eps_fn, schedule, x, steps=30, eta=1.0, generator=g())
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name,steps", [("euler-a", 250), ("ddpm", None)])
def test_ancestral_samplers_reproduce_the_data_mean_and_covariance(name, steps):
    schedule = linear(1000)
    x = _noise(8000, seed=2)
    out = sample(name, GAUSSIAN.eps_fn(schedule), schedule, x, steps=steps,
                 generator=torch.Generator().manual_seed(3)).reshape(-1, 2)
    assert torch.allclose(out.mean(0), GAUSSIAN.mean(), atol=0.015)
    assert torch.allclose(torch.cov(out.T), GAUSSIAN.covariance(), atol=0.012)


def test_deterministic_solvers_reproduce_the_mixture():
    """Samples of the ODE solvers follow the data: mixture mean and covariance at 25 steps."""
    schedule = linear(1000)
    x = _noise(8000, seed=4)
    eps_fn = MIXTURE.eps_fn(schedule)
    for name in ("dpmpp-2m", "dpmpp-3m", "unipc", "heun"):
        out = sample(name, eps_fn, schedule, x, steps=25).reshape(-1, 2)
        assert torch.allclose(out.mean(0), MIXTURE.mean(), atol=0.03), name
        assert torch.allclose(torch.cov(out.T), MIXTURE.covariance(), atol=0.03), name


def test_ddim_inversion_round_trip():
    schedule = linear(1000)
    eps_fn = MIXTURE.eps_fn(schedule)
    images = MIXTURE.sample(256, torch.Generator().manual_seed(6))
    errors = {}
    for steps in (50, 200):
        latent = ddim_invert(eps_fn, schedule, images, steps=steps)
        errors[steps] = _rms(ddim(eps_fn, schedule, latent, steps=steps), images)
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


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "ddpm"])
def test_every_sampler_reports_each_step_and_takes_every_spacing(name):
    s = linear(100)
    eps_fn = GAUSSIAN.eps_fn(s)
    for spacing in ("trailing", "leading", "linspace", "karras"):
        seen = []
        out = sample(name, eps_fn, s, _noise(8), steps=10, spacing=spacing, callback=lambda d: seen.append(d["t"]),
                     generator=torch.Generator().manual_seed(0))
        assert len(seen) == 10 and seen == sorted(seen, reverse=True), (spacing, seen)
        assert torch.isfinite(out).all()
    assert network_calls(name, 10) == (19 if name == "heun" else 10)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_zero_terminal_snr_schedules_sample_from_pure_noise(prediction):
    """With no signal left at T-1, the first step must still produce the data: exercise every sampler
    with the exact denoiser given as the network would give it (v or x0, converted by the schedule)."""
    from undiffuse.parameterization import to_eps

    s = make_schedule("linear", 1000, zero_snr=True)
    x = _noise(4000, seed=8)

    def eps_fn(x_t, t):
        ab = s.alpha_bar[int(t[0])].item()
        x0 = GAUSSIAN.x0(x_t, math.sqrt(ab), math.sqrt(1 - ab))
        eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        pred = x0 if prediction == "x0" else s.v_target(x0, t, eps)
        return to_eps(pred, x_t, t, s, prediction)

    for name, steps in (("ddim", 100), ("dpmpp-2m", 30), ("unipc", 30), ("heun", 30)):
        out = sample(name, eps_fn, s, x, steps=steps).reshape(-1, 2)
        assert torch.allclose(out.mean(0), GAUSSIAN.mean(), atol=0.03), name
        assert torch.allclose(torch.cov(out.T), GAUSSIAN.covariance(), atol=0.03), name
