import math

import pytest
import torch

from undiffuse.schedule import NoiseSchedule, cosine, linear, make_schedule


def test_linear_schedule_matches_ddpm():
    s = linear(1000)
    assert s.T == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0))
    assert s.alpha_bar[-1].item() < 1e-4  # x_{T-1} is almost pure noise


def test_cosine_schedule_follows_its_closed_form():
    T, off = 1000, 0.008
    s = cosine(T)
    f = lambda t: math.cos((t / T + off) / (1 + off) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 250, 500, 900):
        assert s.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_schedule_is_immutable_and_validated():
    s = linear(100)
    with pytest.raises(Exception):
        s.betas = torch.zeros(10)
    with pytest.raises(ValueError):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic")


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_forward_marginal_mean_and_variance(t):
    """x_t | x0 ~ N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I), over many draws of the noise."""
    s = linear(1000)
    n = 200_000
    x0 = torch.tensor([-1.0, 0.3, 0.9]).repeat(n, 1)
    g = torch.Generator().manual_seed(t)
    noise = torch.randn(x0.shape, generator=g)
    x_t = s.q_sample(x0, torch.full((n,), t), noise)
    ab = s.alpha_bar[t].item()
    mean_se = math.sqrt((1 - ab) / n)
    assert torch.allclose(x_t.mean(0), math.sqrt(ab) * x0[0], atol=5 * mean_se)
    assert torch.allclose(x_t.var(0), torch.full((3,), 1 - ab), rtol=0.02, atol=1e-6)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x0) from the product of two Gaussians, computed independently of the formulas."""
    s = linear(1000)
    x0, x_t = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.4], dtype=torch.float64)
    for t in (1, 10, 300, 999):
        ab_prev, alpha = s.alpha_bar[t - 1].item(), s.alphas[t].item()
        # prior q(x_{t-1} | x0) = N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood q(x_t | x_{t-1}) = N(sqrt(alpha) x_{t-1}, beta)
        precision = 1 / (1 - ab_prev) + alpha / (1 - alpha)
        var = 1 / precision
        mean = var * (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(alpha) * x_t / (1 - alpha))
        assert s.posterior_variance[t].item() == pytest.approx(var, rel=1e-9)
        got = s.posterior_mean(x0, x_t, torch.tensor([t]))
        assert got.item() == pytest.approx(mean.item(), rel=1e-9)
    assert s.posterior_variance[0].item() == 0.0  # the last step adds no noise


def test_conversions_are_inverses():
    s = cosine(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 200, 500, 800, 990, 999])
    x_t = s.q_sample(x0, t, eps)
    assert torch.allclose(s.x0_from_eps(x_t, t, eps), x0, atol=1e-6)
    assert torch.allclose(s.eps_from_x0(x_t, t, x0), eps, atol=1e-6)
    assert torch.allclose(s.eps_from_v(x_t, t, s.v_target(x0, t, eps)), eps, atol=1e-9)
    # round trip through x0 at low noise, where dividing by sqrt(1 - alpha_bar) is well conditioned
    mid = t[2:6]
    x0_hat = s.x0_from_eps(x_t[2:6], mid, eps[2:6])
    assert torch.allclose(s.eps_from_x0(x_t[2:6], mid, x0_hat), eps[2:6], atol=1e-9)


def test_sigmoid_schedule_follows_its_formula():
    from undiffuse.schedule import sigmoid

    T, start, end = 1000, -3.0, 3.0
    s = sigmoid(T)
    tau = torch.arange(1, T + 1, dtype=torch.float64) / T
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = (sig(end) - torch.sigmoid(tau * (end - start) + start)) / (sig(end) - sig(start))
    # betas are clamped at 0.999, which touches only the very last step
    assert torch.allclose(s.alpha_bar[:-1], expected[:-1], rtol=1e-9)
    assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all())


def test_zero_terminal_snr_rescaling():
    from undiffuse.schedule import make_schedule

    for name in ("linear", "cosine", "sigmoid"):
        plain, zero = make_schedule(name), make_schedule(name, zero_snr=True)
        assert zero.snr[-1].item() < 1.01e-9 and zero.snr[-1].item() < plain.snr[-1].item()
        assert zero.alpha_bar[0].item() == pytest.approx(plain.alpha_bar[0].item(), rel=1e-12)
        # Lin et al. alg. 1: sqrt(alpha_bar) is shifted and scaled, an affine map of the original
        root_p, root_z = plain.alpha_bar.sqrt()[:-1], zero.alpha_bar.sqrt()[:-1]
        slope = (root_z[0] - root_z[1]) / (root_p[0] - root_p[1])
        assert torch.allclose(root_z, root_z[0] + slope * (root_p - root_p[0]), atol=1e-12)
