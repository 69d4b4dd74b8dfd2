"""Short real training runs on the bundled 8x8 digits (at 16x16, a tiny model): seconds each."""
from dataclasses import replace

import pytest
import torch

from undiffuse import checkpoint as ckpt
from undiffuse.generate import generate, load_run
from undiffuse.recipe import ema_decay_at, lr_at, plan
from undiffuse.train import TrainConfig, Trainer, read_log


def _cfg(**kw):
    base = dict(data="digits", image_size=16, steps=60, batch_size=32, model="tiny", grids=1, seed=3)
    return TrainConfig(**{**base, **kw})


def test_short_run_learns_and_its_checkpoint_samples(tmp_path):
    run = tmp_path / "run"
    result = Trainer(_cfg(), run).train(progress=False)
    assert result.steps == 60
    steps, losses = read_log(run)
    assert steps[-1] == 60
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5  # the loss goes down
    for name in (ckpt.CONFIG, ckpt.MODEL, ckpt.EMA, ckpt.STATE):
        assert (run / name).is_file()
    assert list((run / "samples").glob("*.png"))
    loaded = load_run(run)
    assert loaded.class_names == tuple(str(k) for k in range(10))
    images = generate(loaded, 3, labels=[0, 1, 2], sampler="ddim", steps=5)
    assert images.shape == (3, 1, 16, 16) and images.abs().max() <= 1
    assert torch.isfinite(images).all()


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    whole = Trainer(_cfg(steps=30), tmp_path / "whole")
    whole.train(progress=False)
    part = Trainer(_cfg(steps=30), tmp_path / "part")
    part.train(until=12, progress=False)
    del part
    resumed = Trainer.resume(tmp_path / "part")
    assert resumed.step == 12
    resumed.train(progress=False)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(whole.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert read_log(tmp_path / "whole")[1] == read_log(tmp_path / "part")[1]  # the same loss trajectory


def test_same_seed_same_samples(tmp_path):
    Trainer(_cfg(steps=5, grids=0), tmp_path / "r").train(progress=False)
    loaded = load_run(tmp_path / "r")
    a = generate(loaded, 4, labels=[1, 2, 3, 4], steps=5, sampler="ddim", eta=1.0, seed=11)
    b = generate(loaded, 4, labels=[1, 2, 3, 4], steps=5, sampler="ddim", eta=1.0, seed=11)
    assert torch.equal(a, b)
    # image i is seeded seed + i: the third image alone equals the third of the batch
    c = generate(loaded, 1, labels=[3], steps=5, sampler="ddim", eta=1.0, seed=13)
    assert torch.allclose(a[2], c[0], atol=1e-5)


def test_existing_run_folder_is_never_overwritten(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    with pytest.raises(ckpt.CheckpointError, match="already exists"):
        Trainer(_cfg(), run)
    with pytest.raises(ckpt.CheckpointError, match="not an undiffuse run"):
        Trainer(_cfg(), run, overwrite=True)
    assert (run / "precious.txt").read_text() == "keep me"


def test_bad_config_is_rejected_before_work():
    for bad in (dict(batch_size=0), dict(steps=-1), dict(schedule="square"), dict(cond_drop=1.5),
                dict(minutes=float("nan")), dict(model="huge")):
        with pytest.raises(ValueError):
            _cfg(**bad).validate()
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"stepz": 3})


def test_recipe_follows_the_budget():
    short, long = plan(500, 64), plan(200_000, 64)
    assert short.warmup < long.warmup and short.ema_decay < long.ema_decay
    assert lr_at(0, short) < lr_at(short.warmup, short)  # warm-up rises
    assert lr_at(short.steps - 1, short) == pytest.approx(0.1 * short.lr, rel=0.02)  # cosine to a tenth
    assert ema_decay_at(0, short) < 0.2 and ema_decay_at(10_000, short) == short.ema_decay
    horizon = 1 / (1 - short.ema_decay)
    assert 0.05 * short.steps <= horizon <= 0.2 * short.steps  # the EMA averages the last tenth or so


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weight_turns_the_target_error_into_min_snr_times_the_x0_error(prediction):
    from undiffuse.schedule import linear
    from undiffuse.train import min_snr_weight

    s, gamma = linear(1000), 5.0
    t = torch.tensor([1, 50, 200, 600, 999])
    x0 = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    eps = torch.randn(5, 1, 2, 2, dtype=torch.float64)
    x_t = s.q_sample(x0, t, eps)
    d = 1e-3 * torch.randn(5, 1, 2, 2, dtype=torch.float64)  # an error in the network's output
    if prediction == "eps":
        x0_hat = s.x0_from_eps(x_t, t, eps + d)
    elif prediction == "v":
        x0_hat = s.x0_from_eps(x_t, t, s.eps_from_v(x_t, t, s.v_target(x0, t, eps) + d))
    else:
        x0_hat = x0 + d
    weighted = min_snr_weight(s, t, gamma, prediction).double() * d.pow(2).flatten(1).sum(1)
    x0_err = (x0_hat - x0).pow(2).flatten(1).sum(1)
    assert torch.allclose(weighted, s.snr[t].clamp(max=gamma) * x0_err, rtol=1e-4)


def test_a_time_budget_is_refit_early_and_again_a_quarter_of_the_way_in(tmp_path):
    cfg = TrainConfig(data="digits", image_size=16, minutes=0.05, model="tiny", batch_size=8, grids=0)
    trainer = Trainer(cfg, tmp_path / "r")
    refits = []

    def replan(seconds_per_step):
        refits.append((trainer.step, seconds_per_step))
        trainer.plan = replace(trainer.plan, steps=1000)

    trainer._replan = replan
    times = []
    for step in range(1, 600):
        trainer.step = step
        times.append(0.2 if step <= 25 else 0.1)  # the first steps run slow
        trainer._replan_now(times)
    assert refits == [(25, 0.2), (250, 0.1)]
