"""Samplers driven by the exact denoiser of Gaussian data, where the answer is known in closed form."""
import pytest
import torch

from undiffuse.samplers import ddim, ddpm, randn, sample, timesteps
from undiffuse.schedule import linear

from gaussian import exact_denoise

M, S = 0.4, 0.25  # data: every pixel N(M, S^2)
EVERY = list(range(999, -1, -1))  # every step of a 1000-step schedule, as ddpm walks it


def _noise(n=4000, seed=0):
    return torch.randn(n, 1, 1, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ddpm_with_exact_denoiser_reproduces_the_data_distribution():
    s = linear(1000)
    out = ddpm(exact_denoise(s, M, S), s, _noise(), EVERY, generator=torch.Generator().manual_seed(1))
    assert out.mean().item() == pytest.approx(M, abs=0.01)
    assert out.std().item() == pytest.approx(S, rel=0.04)


def test_ddpm_without_its_extra_noise_collapses_to_the_mean():
    s = linear(1000)
    out = ddpm(exact_denoise(s, M, S), s, _noise(), EVERY, add_noise=False)
    assert out.mean().item() == pytest.approx(M, abs=0.01)
    assert out.std().item() < 0.2 * S  # the samples lose almost all their variety


def _exact_flow(s, x_T):
    """The probability-flow ODE keeps each sample's standard score (x_t - a m) / sd_t: for Gaussian
    data its solution from x_T is affine and known exactly."""
    ab = s.alpha_bar[-1].item()
    sd = (ab * S ** 2 + 1 - ab) ** 0.5
    return M + S * (x_T - ab ** 0.5 * M) / sd


def test_ddim_eta_zero_solves_the_probability_flow_ode_at_first_order():
    s = linear(1000)
    x = _noise()
    errors = {n: (ddim(exact_denoise(s, M, S), s, x, timesteps(1000, n)) - _exact_flow(s, x)).abs().max().item()
              for n in (100, 200, 400)}
    assert errors[400] < 0.03
    for n in (100, 200):  # first order: twice the steps, half the error
        assert errors[n] / errors[2 * n] == pytest.approx(2.0, rel=0.15)
    out = ddim(exact_denoise(s, M, S), s, x, EVERY)
    assert out.mean().item() == pytest.approx(M, abs=0.01)
    assert out.std().item() == pytest.approx(S, rel=0.02)


def test_ddim_eta_one_over_all_steps_is_ddpm():
    """With every step and eta = 1, DDIM's sigma is DDPM's posterior variance: same noise, same path."""
    s = linear(1000)
    x = _noise(64)
    a = ddpm(exact_denoise(s, M, S), s, x, EVERY, generator=torch.Generator().manual_seed(7))
    b = ddim(exact_denoise(s, M, S), s, x, EVERY, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, b, atol=1e-8)


def test_ddim_sigma_equals_posterior_variance_for_adjacent_steps():
    s = linear(1000)
    ab = s.alpha_bar
    for t in (1, 10, 500, 999):
        sigma2 = (1 - ab[t - 1]) / (1 - ab[t]) * (1 - ab[t] / ab[t - 1])
        assert sigma2.item() == pytest.approx(s.posterior_variance[t].item(), rel=1e-9)


def test_ddim_eta_zero_is_deterministic():
    s = linear(1000)
    x = _noise(16)
    grid = timesteps(1000, 25)
    a = ddim(exact_denoise(s, M, S), s, x, grid, generator=torch.Generator().manual_seed(1))
    b = ddim(exact_denoise(s, M, S), s, x, grid, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = ddim(exact_denoise(s, M, S), s, x, grid, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)


def test_timesteps_spacings():
    assert timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert timesteps(1000, 4, "linspace") == [999, 666, 333, 0]
    assert timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        timesteps(10, 11)
    with pytest.raises(ValueError, match="spacing"):
        timesteps(10, 5, "random")


def test_per_image_generators_make_an_image_depend_on_its_own_seed_only():
    gens = lambda seeds: [torch.Generator().manual_seed(k) for k in seeds]  # noqa: E731
    both = randn((2, 1, 3, 3), gens([3, 4]))
    assert torch.equal(both[0], randn((1, 1, 3, 3), gens([3]))[0])
    assert torch.equal(both[1], randn((1, 1, 3, 3), gens([4]))[0])


def test_callback_sees_every_step():
    s = linear(100)
    seen = []
    ddim(exact_denoise(s, M, S), s, _noise(4), timesteps(100, 10),
         callback=lambda d: seen.append((d["i"], d["t"], d["x0"].shape)))
    assert [i for i, _, _ in seen] == list(range(10))
    assert seen[0][1] == 99


def test_sample_dispatch_rejects_bad_names_and_steps():
    s = linear(100)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("plms", exact_denoise(s, M, S), s, _noise(4))
    with pytest.raises(ValueError, match="another sampler"):
        sample("ddpm", exact_denoise(s, M, S), s, _noise(4), steps=10)


def test_ddpm_refuses_a_grid_that_skips_steps():
    s = linear(100)
    with pytest.raises(ValueError, match="every step"):
        ddpm(exact_denoise(s, M, S), s, _noise(4), timesteps(100, 10))
    seen = []
    ddpm(exact_denoise(s, M, S), s, _noise(4), list(range(29, -1, -1)), callback=lambda d: seen.append(d["t"]))
    assert seen == list(range(29, -1, -1))  # part-way down, as img2img starts it


def test_sample_computes_the_grid_and_the_samplers_take_it_as_data():
    s = linear(100)
    x = _noise(16)
    for spacing in ("trailing", "leading", "linspace", "karras"):
        grid = timesteps(100, 7, spacing, s)
        assert torch.equal(sample("ddim", exact_denoise(s, M, S), s, x, steps=7, spacing=spacing),
                           ddim(exact_denoise(s, M, S), s, x, grid))
    assert torch.equal(sample("ddpm", exact_denoise(s, M, S), s, x, generator=torch.Generator().manual_seed(0)),
                       ddpm(exact_denoise(s, M, S), s, x, list(range(99, -1, -1)),
                            generator=torch.Generator().manual_seed(0)))
