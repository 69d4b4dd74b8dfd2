"""Short real training runs on the bundled 8x8 digits (at 16x16, a tiny model): seconds each."""
import pytest
import torch

from undiffuse import checkpoint as ckpt
from undiffuse.errors import UsageError
from undiffuse.generation import generate, load_run
from undiffuse.training.learner import Learner, draw_batch
from undiffuse.training.recipe import EMA_SHARE, ema_decay_at, lr_at, plan
from undiffuse.training import TrainConfig, Trainer, diffusion_loss, read_log


def _cfg(**kw):
    base = dict(data="digits", image_size=16, steps=60, batch_size=32, model="tiny", grids=1, seed=3)
    return TrainConfig.flat(**{**base, **kw})


def test_short_run_learns_and_its_checkpoint_samples(tmp_path):
    run = tmp_path / "run"
    result = Trainer.create(_cfg(), run).train(progress=False)
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
    whole = Trainer.create(_cfg(steps=30), tmp_path / "whole")
    whole.train(progress=False)
    part = Trainer.create(_cfg(steps=30), tmp_path / "part")
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


def test_the_loop_takes_the_loss_that_users_call(tmp_path):
    trainer = Trainer.create(_cfg(steps=2, grids=0, prediction="v"), tmp_path / "r")
    x0, cond, t, noise = draw_batch(trainer.setup, 0)
    expected = diffusion_loss(trainer.model, trainer.schedule, x0, t, noise, cond, prediction="v", min_snr=5.0)
    assert trainer.train_step() == pytest.approx(expected.item(), rel=1e-6)


def test_same_seed_same_samples(tmp_path):
    Trainer.create(_cfg(steps=5, grids=0), tmp_path / "r").train(progress=False)
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
        Trainer.create(_cfg(), run)
    with pytest.raises(ckpt.CheckpointError, match="not an undiffuse run"):
        Trainer.create(_cfg(), run, overwrite=True)
    assert (run / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad,needle", [
    (dict(batch_size=0), "batch_size must be positive, got 0"), (dict(steps=-1), "steps must be positive"),
    (dict(schedule="square"), "schedule must be one of linear, cosine, sigmoid, got 'square'"),
    (dict(cond_drop=1.5), "cond_drop must lie in [0, 1)"), (dict(minutes=float("nan")), "minutes must be positive"),
    (dict(model="huge"), "model must be one of auto, tiny"), (dict(steps="many"), "steps must be an integer or none"),
    (dict(conditional="yes"), "conditional must be true or false"), (dict(channels=2), "channels must be one of 1, 3"),
    (dict(image_size=4), "image_size must lie in [8, 1024]"), (dict(grad_accum=64), "empty parts"),
    (dict(zero_snr=True), "prediction v or x0"), (dict(stepz=3), "unknown training option(s): stepz"),
])
def test_a_bad_option_is_refused_when_the_config_is_built(bad, needle):
    with pytest.raises(UsageError) as e:
        _cfg(**bad)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_the_config_groups_its_options_and_converts_to_flat_and_back():
    cfg = _cfg(lr=1e-3, precision="bf16", device="cpu")
    assert (cfg.source.data, cfg.diffusion.model, cfg.optim.lr, cfg.runtime.device) == ("digits", "tiny", 1e-3, "cpu")
    assert TrainConfig.flat(**cfg.options()) == cfg
    assert cfg.updated(steps=5).optim.steps == 5 and cfg.optim.steps == 60  # frozen: a copy
    assert len(cfg.options()) == 45 and all(len(fields) <= 12 for fields in (
        vars(cfg.source), vars(cfg.diffusion), vars(cfg.optim), vars(cfg.runtime)))
    assert TrainConfig.choices()["precision"] == ("auto", "fp32", "bf16", "fp16")


def test_recipe_follows_the_budget():
    short, long = plan(500, 64), plan(200_000, 64)
    assert short.warmup < long.warmup and short.ema_decay < long.ema_decay
    assert lr_at(0, short) < lr_at(short.warmup, short)  # warm-up rises
    assert lr_at(short.steps - 1, short) == pytest.approx(0.1 * short.lr, rel=0.02)  # cosine to a tenth
    assert ema_decay_at(0, short) < 0.2 and ema_decay_at(10_000, short) == short.ema_decay
    horizon = 1 / (1 - short.ema_decay)
    assert horizon == pytest.approx(EMA_SHARE * short.steps)  # the EMA averages the last share of the run


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weight_turns_the_target_error_into_min_snr_times_the_x0_error(prediction):
    from undiffuse.schedule import linear
    from undiffuse.parameterization import min_snr_weight

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


class FakeClock:
    """Seconds that pass only when the test says: each step costs what `step_cost(now)` says."""

    def __init__(self, step_cost):
        self.now, self.step_cost = 0.0, step_cost

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch):
    """Steps cost 0.5 s until a minute has passed, then 2 s (the machine got busier); a grid costs
    3 s, a checkpoint 2 s. Training itself runs for real, on a tiny model."""
    clock = FakeClock(lambda now: 0.5 if now < 60 else 2.0)
    def slow(cost, function):
        def timed(*args):
            result = function(*args)
            clock.now += cost(clock.now) if callable(cost) else cost
            return result
        return timed

    monkeypatch.setattr(Learner, "backward", slow(lambda now: clock.step_cost(now), Learner.backward))
    monkeypatch.setattr(ckpt, "save_checkpoint", slow(2.0, ckpt.save_checkpoint))
    monkeypatch.setattr(Trainer, "write_grid", slow(3.0, Trainer.write_grid))
    return clock


def _budget_cfg(**kw):
    return TrainConfig.flat(**{**dict(data="digits", image_size=8, minutes=2, model="tiny", batch_size=4, grids=4,
                                 checkpoint_minutes=0.5), **kw})


def test_a_time_budget_is_a_deadline_whatever_the_machine_does(tmp_path, fake_clock):
    trainer = Trainer.create(_budget_cfg(), tmp_path / "r", clock=fake_clock)
    first_estimate = trainer.plan.steps
    result = trainer.train(progress=False)
    assert 0.98 * 120 <= result.seconds <= 120  # grids, checkpoints and the final save included
    assert fake_clock.now == pytest.approx(result.seconds)
    # the machine slowed down 4x after a minute: far fewer steps than first planned, and the
    # schedules still ended where they should
    assert result.steps < 0.6 * first_estimate
    assert trainer.lr == pytest.approx(0.1 * trainer.plan.lr, rel=0.15)  # the cosine reached its floor
    assert trainer.plan.steps == result.steps == read_log(tmp_path / "r")[0][-1]
    horizon = 1 / (1 - trainer.plan.ema_decay)
    assert horizon == pytest.approx(EMA_SHARE * result.steps, rel=0.25)  # over the steps it really took
    grids = sorted((tmp_path / "r" / "samples").glob("step*.png"))
    assert len(grids) == 4 and grids[-1].name == f"step{result.steps:07d}.png"


def test_the_end_of_a_run_is_reserved_at_the_speed_the_machine_has_then(tmp_path, monkeypatch):
    """Everything slows down 4x half-way (a busy neighbour arrives): the steps, the grids, the
    checkpoints and the summary (loss curve and card). The command had spent 5 s starting up. The
    run still ends by the deadline, because the end is reserved at the speed of the steps now, not
    at the speed its costs were measured at (which would end at about 133 s)."""
    from undiffuse.training import preview

    clock = FakeClock(None)

    def costs(seconds, function):
        def timed(*args, **kwargs):
            result = function(*args, **kwargs)
            clock.now += seconds * (1.0 if clock.now < 55 else 4.0)
            return result
        return timed

    monkeypatch.setattr(Learner, "backward", costs(0.5, Learner.backward))
    monkeypatch.setattr(ckpt, "save_checkpoint", costs(2.0, ckpt.save_checkpoint))
    monkeypatch.setattr(Trainer, "write_grid", costs(3.0, Trainer.write_grid))
    monkeypatch.setattr(preview, "write_loss_curve", costs(1.0, preview.write_loss_curve))
    trainer = Trainer.create(_budget_cfg(), tmp_path / "r", clock=clock, spent=5.0)
    result = trainer.train(progress=False)
    assert result.seconds == pytest.approx(5.0 + clock.now)
    assert 0.95 * 120 <= result.seconds <= 120
    assert (tmp_path / "r" / "loss.png").is_file() and (tmp_path / "r" / "README.md").is_file()


def test_the_learning_rate_follows_the_elapsed_share_of_the_budget(tmp_path, fake_clock):
    trainer = Trainer.create(_budget_cfg(grids=0), tmp_path / "r", clock=fake_clock)
    rates = []
    trainer.train(until=trainer.plan.warmup + 1, progress=False)
    for _ in range(40):
        done = trainer.done()
        trainer.train_step()
        rates.append((done, trainer.lr))
        fake_clock.now += 1.0  # whatever the steps cost, the elapsed share drives the rate
    assert all(lr == pytest.approx(lr_at(trainer.plan.warmup + 1, trainer.plan, done)) for done, lr in rates)
    assert [lr for _, lr in rates] == sorted((lr for _, lr in rates), reverse=True)


def test_a_resumed_time_budget_ends_at_the_same_deadline(tmp_path, fake_clock):
    Trainer.create(_budget_cfg(), tmp_path / "r", clock=fake_clock).train(until=30, progress=False)
    spent = fake_clock.now
    fake_clock.now += 1000.0  # time between the sessions does not count
    result = Trainer.resume(tmp_path / "r", clock=fake_clock).train(progress=False)
    assert 0.98 * 120 <= result.seconds <= 120 and spent < result.seconds
    assert len(list((tmp_path / "r" / "samples").glob("step*.png"))) == 4


def test_the_log_ends_on_the_last_step_a_deadline_allowed(tmp_path, fake_clock):
    fake_clock.step_cost = lambda now: 0.1  # over 500 steps: the log writes every few steps
    result = Trainer.create(_budget_cfg(grids=1), tmp_path / "r", clock=fake_clock).train(progress=False)
    steps = read_log(tmp_path / "r")[0]
    assert steps[1] - steps[0] > 1 and steps[-1] == result.steps


def test_flips_mirror_about_half_of_each_batch_the_same_way_every_time():
    from undiffuse.training.learner import draw_batch
    from undiffuse.training.setup import new_setup

    plain = new_setup(_cfg(batch_size=64))
    mirrored = new_setup(_cfg(batch_size=64, flip=True))
    for step in (0, 7):
        a, b, again = draw_batch(plain, step), draw_batch(mirrored, step), draw_batch(mirrored, step)
        tensors = [lambda d: d[0], lambda d: d[1].classes.vectors, lambda d: d[1].classes.null, lambda d: d[2],
                   lambda d: d[3]]
        assert all(torch.equal(f(b), f(again)) for f in tensors)  # a pure function of the step
        assert all(torch.equal(f(a), f(b)) for f in tensors[1:])  # labels, dropout, t, noise: the same
        same = (a[0] == b[0]).flatten(1).all(1)
        flipped = (a[0].flip(-1) == b[0]).flatten(1).all(1)
        assert (same | flipped).all() and 16 < (~same).sum() < 48


def test_the_recipe_mirrors_colour_sets_not_glyphs_and_guides_colour_harder_unless_asked_otherwise():
    from undiffuse.training.recipe import GUIDANCE, SAMPLE_STEPS, SAMPLER
    from undiffuse.training.setup import new_setup

    colour, digits = new_setup(_cfg(data="emoji")).cfg, new_setup(_cfg()).cfg
    assert colour.source.flip is True and digits.source.flip is False  # a mirrored 2 is no 2
    assert (colour.diffusion.guidance, digits.diffusion.guidance) == (GUIDANCE[3], GUIDANCE[1])
    assert (colour.runtime.sampler, digits.runtime.sampler) == (SAMPLER[3], None) == ("dpmpp-2m", None)
    assert (colour.runtime.sample_steps, digits.runtime.sample_steps) == (SAMPLE_STEPS[3], None)
    typed = new_setup(_cfg(data="emoji", sampler="ddim")).cfg.runtime  # the steps belong to the sampler
    assert (typed.sampler, typed.sample_steps) == ("ddim", None)
    typed = new_setup(_cfg(data="emoji", sample_steps=7)).cfg.runtime
    assert (typed.sampler, typed.sample_steps) == (SAMPLER[3], 7)
    upscaling = new_setup(_cfg(data="emoji", task="upscale", factor=2)).cfg.runtime
    assert (upscaling.sampler, upscaling.sample_steps) == (None, None)
    assert GUIDANCE[3] > GUIDANCE[1]
    asked = new_setup(_cfg(data="emoji", flip=False, guidance=1.5)).cfg
    assert (asked.source.flip, asked.diffusion.guidance) == (False, 1.5)
    assert new_setup(_cfg(flip=True)).cfg.source.flip is True


def test_the_recipe_gives_colour_images_on_a_cpu_a_patch_stem_and_v_prediction_and_nothing_else():
    from undiffuse.training.recipe import patch_for
    from undiffuse.training.setup import new_setup

    colour = new_setup(_cfg(data="emoji", image_size=32))
    assert colour.cfg.diffusion.patch == 2 and colour.unet_config("tiny").patch == 2
    assert (colour.cfg.diffusion.prediction, colour.cfg.diffusion.min_snr) == ("v", 1.0)  # behind a patch stem
    unpatched = new_setup(_cfg(data="emoji", image_size=32, patch=1)).cfg.diffusion
    assert (unpatched.patch, unpatched.prediction, unpatched.min_snr) == (1, "eps", 5.0)  # asked: kept
    assert new_setup(_cfg(data="emoji", image_size=32, prediction="x0")).cfg.diffusion.prediction == "x0"
    assert new_setup(_cfg(data="emoji", image_size=32, min_snr=0.0)).cfg.diffusion.min_snr == 0.0  # plain MSE, asked
    digits = new_setup(_cfg(data="digits", image_size=32)).cfg.diffusion
    assert (digits.patch, digits.prediction, digits.min_snr) == (1, "eps", 5.0)  # glyphs
    assert new_setup(_cfg(data="emoji", image_size=16)).cfg.diffusion.patch == 1  # too small to halve
    assert new_setup(_cfg(data="emoji", image_size=32, block_style="adm")).cfg.diffusion.patch == 1  # exportable
    assert patch_for(32, 3, "cuda", "film") == 1 and patch_for(64, 3, "cpu", "film") == 2
    assert patch_for(32, 3, "cpu", "film", "upscale") == 1


def test_a_run_samples_at_its_recorded_guidance_and_older_runs_at_the_default(tmp_path):
    import json

    from undiffuse.cli.flags import conditioning
    from undiffuse.generation import DEFAULT_GUIDANCE, generate, load_run
    from types import SimpleNamespace

    Trainer.create(_cfg(steps=2, guidance=3.5, sample_steps=4, image_size=8), tmp_path / "r").train(progress=False)
    run = load_run(tmp_path / "r")
    args = SimpleNamespace(guidance=None, label="each", context=None, run="r")
    assert run.guidance == 3.5 and conditioning(args, run, 10, "each").guidance == 3.5
    walked = []
    generate(run, 1, labels=[0], callback=lambda step, *rest: walked.append(step))
    assert len(walked) == 4  # the run's own steps
    walked.clear()
    generate(run, 1, labels=[0], steps=3, callback=lambda step, *rest: walked.append(step))
    assert len(walked) == 3
    assert conditioning(SimpleNamespace(**{**vars(args), "guidance": 1.0}), run, 10, "each").guidance == 1.0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    del config["train"]["guidance"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    assert load_run(tmp_path / "r").guidance == DEFAULT_GUIDANCE
    assert "guidance 3.5 and 4 ddim steps" in (tmp_path / "r" / "README.md").read_text()


def test_a_run_samples_with_its_recorded_sampler_everywhere_and_older_runs_with_the_default(tmp_path):
    import json

    from undiffuse.cli.flags import sampler_options
    from undiffuse.edit import interpolate
    from undiffuse.generation import DEFAULT_SAMPLER, generate, load_run
    from undiffuse.serve.app import describe
    from types import SimpleNamespace

    Trainer.create(_cfg(steps=2, sampler="dpmpp-2m", sample_steps=3, image_size=8), tmp_path / "r").train(progress=False)
    run = load_run(tmp_path / "r")
    assert (run.sampler, run.sample_steps) == ("dpmpp-2m", 3)
    own = generate(run, 2, labels=[0, 1], seed=4)
    assert torch.equal(own, generate(run, 2, labels=[0, 1], seed=4, sampler="dpmpp-2m", steps=3))
    assert not torch.allclose(own, generate(run, 2, labels=[0, 1], seed=4, sampler="ddim", steps=3))
    walked = []  # another sampler asked without steps takes its own default, not the run's 3
    generate(run, 1, labels=[0], sampler="ddim", callback=lambda step, *rest: walked.append(step))
    assert len(walked) == 10
    strip = interpolate(run, (4, 5), 2, labels=[0, 0])  # its ends are sample's images: the same sampler
    assert torch.allclose(strip[0], own[0], atol=1e-6)
    flags = SimpleNamespace(sampler=None, steps=None, no_noise=False, eta=None, spacing=None)
    assert sampler_options(flags, run)["sampler"] == "dpmpp-2m"
    page = describe(run, "r")
    assert (page["default_sampler"], page["default_steps"]["dpmpp-2m"]) == ("dpmpp-2m", 3)
    assert "3 dpmpp-2m steps" in (tmp_path / "r" / "README.md").read_text()
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    del config["train"]["sampler"]  # a run recorded before runs had their own sampler
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    assert load_run(tmp_path / "r").sampler == DEFAULT_SAMPLER
