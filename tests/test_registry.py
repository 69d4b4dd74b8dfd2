"""Every sampler in the registry, as its record describes it. The tests are parametrized over REGISTRY
itself, so a newly registered sampler is checked without a line here: it runs with every spacing that
applies on several schedules, returns finite images, calls the network as often as `network_calls`
says and only at its grid's steps, shows every step to the callback, takes the options its record
lists, adds fresh noise exactly when its record says so, and converges on the exact denoiser of a
Gaussian mixture."""
import pytest
import torch

from undiffuse.samplers import (REGISTRY, SPACINGS, Sampler, ddim, ddim_stepper, get, network_calls, sample,
                                steps_walked, timesteps, walk)
from undiffuse.samplers.common import pairs
from undiffuse.schedule import linear, make_schedule

from test_solvers import MIXTURE, _noise, _reference, _rms, log_snr_uniform

NAMES = list(REGISTRY)
OPTION_VALUES = {"eta": 0.5, "add_noise": False}  # for each option a record may list, a value off its default
T, STEPS = 100, 10


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _counted(denoise):
    calls = []

    def counted(x_t, t):
        calls.append(int(t[0]))
        return denoise(x_t, t)

    return counted, calls


def _spacings(record: Sampler):
    return ("trailing",) if record.walks_every_step else SPACINGS


@pytest.mark.parametrize("schedule,zero_snr", [("linear", False), ("cosine", False), ("sigmoid", True)])
@pytest.mark.parametrize("name", NAMES)
def test_each_sampler_runs_every_spacing_with_the_calls_and_steps_its_record_counts(name, schedule, zero_snr):
    record, s = get(name), make_schedule(schedule, T, zero_snr)
    steps = None if record.walks_every_step else STEPS
    for spacing in _spacings(record):
        denoise, calls = _counted(MIXTURE.denoise(s))
        seen = []
        out = sample(name, denoise, s, _noise(8), steps=steps, spacing=spacing, callback=seen.append, generator=_gen())
        grid = record.grid(s, steps, spacing)
        assert torch.isfinite(out).all(), spacing
        assert len(calls) == network_calls(name, steps, T) == record.network_calls(steps, T), spacing
        assert set(calls) <= set(grid) and calls[0] == grid[0]  # a discrete network, asked at its steps only
        assert [d["t"] for d in seen] == grid and len(grid) == steps_walked(name, steps, T), spacing
        assert [d["i"] for d in seen] == list(range(len(grid)))
        assert torch.equal(out, seen[-1]["x"]) and all(torch.isfinite(d["x0"]).all() for d in seen)


@pytest.mark.parametrize("name", NAMES)
def test_each_sampler_takes_its_default_steps_and_refuses_others_if_it_walks_every_step(name):
    record, s = get(name), linear(T)
    denoise, calls = _counted(MIXTURE.denoise(s))
    sample(name, denoise, s, _noise(4), generator=_gen())
    assert len(calls) == record.network_calls(None, T)
    if record.walks_every_step:
        assert record.grid(s) == list(range(T - 1, -1, -1))
        with pytest.raises(ValueError, match="another sampler"):
            sample(name, denoise, s, _noise(4), steps=STEPS)
    else:
        assert len(record.grid(s)) == record.default_steps


@pytest.mark.parametrize("name", NAMES)
def test_each_sampler_takes_the_options_its_record_lists_and_clips_in_one_place(name):
    record, s = get(name), linear(T)
    denoise = MIXTURE.denoise(s)
    plain = sample(name, denoise, s, _noise(8), generator=_gen())
    for option in record.options:
        assert option in OPTION_VALUES, f"give tests/test_registry.py a test value for {name}'s option {option!r}"
        out = sample(name, denoise, s, _noise(8), generator=_gen(), **{option: OPTION_VALUES[option]})
        assert torch.isfinite(out).all() and not torch.equal(out, plain), option
    seen = []
    sample(name, denoise, s, 3 * _noise(8), clip_denoised=True, callback=seen.append, generator=_gen())
    assert all(d["x0"].abs().max() <= 1 for d in seen)


@pytest.mark.parametrize("name", NAMES)
def test_the_stochastic_flag_says_whether_fresh_noise_changes_the_result(name):
    s = linear(T)
    a, b = (sample(name, MIXTURE.denoise(s), s, _noise(8), generator=_gen(seed)) for seed in (1, 2))
    assert torch.equal(a, b) != get(name).stochastic


@pytest.mark.parametrize("name", NAMES)
def test_each_sampler_converges_on_the_exact_mixture_denoiser(name):
    """Deterministic samplers approach the probability-flow ODE's own answer as their steps grow (on a
    schedule uniform in log-SNR, where every step shrinks as their number grows); stochastic ones, over
    every step, draw the mixture's mean and covariance."""
    record = get(name)
    if not record.stochastic:
        s, x = log_snr_uniform(201), _noise(64, seed=11)
        ref = _reference(MIXTURE, s, x)
        errors = [_rms(sample(name, MIXTURE.denoise(s), s, x, steps=n, spacing="linspace"), ref) for n in (10, 40, 160)]
        assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 3, errors
        return
    s = linear(200)
    denoise = MIXTURE.denoise(s)
    steps = None if record.walks_every_step else s.T
    out = sample(name, denoise, s, _noise(8000, seed=12), steps=steps, generator=_gen(13)).reshape(-1, 2)
    assert torch.allclose(out.mean(0), MIXTURE.mean(), atol=0.03)
    assert torch.allclose(torch.cov(out.T), MIXTURE.covariance(), atol=0.03)


def test_a_new_sampler_is_one_function_and_its_record(monkeypatch):
    """What ARCHITECTURE.md promises: a function over (denoise, schedule, x, timesteps) and a record,
    and `sample`, the counts and the record's grid work for it."""
    def plain(denoise, schedule, x, timesteps, *, clip_denoised=False, generator=None, callback=None):
        return walk(denoise, schedule, x, pairs(timesteps), ddim_stepper(schedule), clip_denoised=clip_denoised,
                    callback=callback)

    monkeypatch.setitem(REGISTRY, "plain", Sampler("plain", plain, 7, summary="DDIM again, for the test"))
    s = linear(T)
    denoise, calls = _counted(MIXTURE.denoise(s))
    out = sample("plain", denoise, s, _noise(8), spacing="karras")
    assert torch.equal(out, ddim(MIXTURE.denoise(s), s, _noise(8), timesteps(T, 7, "karras", s)))
    assert len(calls) == network_calls("plain", None, T) == steps_walked("plain", None, T) == 7
