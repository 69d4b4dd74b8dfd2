"""Distillation (training/distill.py): the target against a DDIM step, the teacher's trajectories
against the teacher sampled on its own, the student's start, and the student as a run folder: it
samples in its calls, refuses what it was not taught, exports nothing, and resumes bit-exactly."""
import json

import pytest
import torch

from undiffuse.cli import main
from undiffuse.conditions import Classes, Condition, one_hot
from undiffuse.conditions.scale import GuidanceScale
from undiffuse.generation import generate, load_run
from undiffuse.guidance import denoiser
from undiffuse.parameterization import to_eps_x0
from undiffuse.precision import FP32
from undiffuse.samplers import SAMPLERS, ddim_step
from undiffuse.schedule import linear
from undiffuse.training.distill import REUSE, TEACHER_SOLVER, Distiller
from undiffuse.unet import UNet

from cli_helpers import fails_cleanly


def _distiller(run, calls=2, batch=16):
    schedule = load_run(run).schedule
    return Distiller(run, schedule, calls, batch, seed=5, guidance=2.0, device=torch.device("cpu"))


def test_the_target_makes_one_ddim_step_land_where_the_teacher_went():
    """x0* turns the student's single DDIM step from x_i into the teacher's x_{i+1}; at the last point it
    is the teacher's final image."""
    s = linear(1000)
    d = Distiller.__new__(Distiller)
    d.schedule = s
    g = torch.Generator().manual_seed(0)
    x, x_next = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    for t, t_next in ((999, 499), (499, 249), (749, 0)):
        target = d._target(x, x_next, t, t_next)
        ab = s.alpha_bar[t]
        eps = (x - ab.sqrt() * target) / (1 - ab).sqrt()
        assert torch.allclose(ddim_step(s, target, eps, t, t_next, 0.0), x_next, atol=1e-4)
    assert torch.equal(d._target(x, x_next, 499, -1), x_next)


def test_the_v_target_gives_back_the_clean_image_target():
    """A student that outputs the loss's v exactly implies the x0 target: the loss asks for what sampling uses."""
    s = linear(1000)
    g = torch.Generator().manual_seed(1)
    x_t, target = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([999, 874, 499, 249, 124, 10])
    d = Distiller.__new__(Distiller)
    d.schedule = s
    perfect = lambda x, tt, cond: (s.alpha_bar[tt][:, None, None, None].sqrt() * x - target)  # noqa: E731
    v = perfect(x_t, t, None) / (1 - s.alpha_bar[t])[:, None, None, None].sqrt()
    assert d.loss(lambda x, tt, c: v, x_t, t, target, None).max() < 1e-6
    _, x0 = to_eps_x0(v, x_t, t, s, "v")
    assert torch.allclose(x0.float(), target, atol=1e-4)


def test_the_trajectories_are_the_teacher_guided_as_sample_guides_it(trained):
    """Row by row, the states at the student's grid and the final image equal the teacher sampled on its
    own (TEACHER_SOLVER, guided by guidance.denoiser at that row's class and scale: an independent
    per-row blend)."""
    d = _distiller(trained, calls=2)
    states, cond, w = d._trajectories(3)
    teacher = load_run(trained, precision="fp32")
    assert states.shape[0] == 3 and states.shape[1] == d.per_step
    assert d.student_grid == [d.grid[0], d.grid[len(d.grid) // 2]] and len(d.grid) % 2 == 0
    for j in range(d.per_step):
        row = cond.rows(slice(j, j + 1))
        seen = []
        denoise = denoiser(teacher.net, teacher.schedule, prediction=teacher.prediction,
                           cond=Condition(row.classes), guidance=float(w[j]))
        final = SAMPLERS[TEACHER_SOLVER](denoise, teacher.schedule, states[0, j:j + 1], d.grid,
                                         clip_denoised=True, callback=lambda info: seen.append(info["x"]))
        assert torch.allclose(seen[d.every - 1], states[1, j:j + 1], atol=1e-4)
        assert torch.allclose(final, states[2, j:j + 1], atol=1e-4)
    assert ((w >= d.low) & (w <= d.high)).all() and d.low == 1.0 and d.high == 4.0


def test_a_batch_is_a_function_of_its_step_and_reuses_each_trajectory(trained):
    d = _distiller(trained, calls=2, batch=16)
    x_t, cond, t, target = d.batch(10, FP32)
    assert len(x_t) == len(t) == len(target) == 16 and len(cond.scale.value) == 16
    assert set(t.tolist()) == set(d.student_grid)
    fresh = _distiller(trained, calls=2, batch=16)  # a resumed run: nothing memoised
    again = fresh.batch(10, FP32)
    assert torch.equal(again[0], x_t) and torch.equal(again[3], target)
    later = d.batch(10 + REUSE - 1, FP32)[0]  # step 10's trajectories still in the batch, then gone
    assert any(torch.equal(row, x_t[-1]) for row in later)
    assert not any(torch.equal(row, x_t[-1]) for row in d.batch(10 + REUSE, FP32)[0])


def test_a_student_starts_as_its_teacher_whatever_the_scale(trained):
    d = _distiller(trained)
    cfg = d.teacher.cfg
    student = UNet(type(cfg)(**{**cfg.to_dict(), "guidance_input": True}))
    d.initialise(student)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([900, 500, 20])
    classes = Classes.of(one_hot(torch.tensor([1, 2, 3]), 10))
    want = d.teacher(x, t, Condition(classes))
    for w in (1.0, 3.5):
        got = student(x, t, Condition(classes, scale=GuidanceScale.of(w, 3)))
        assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="guidance scale"):
        student(x, t, Condition(classes))


@pytest.fixture(scope="module")
def student(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "s"
    assert main(["distill", str(trained), "--out", str(out), "--calls", "2", "--steps", "6", "--batch-size", "8",
                 "--grids", "1", "--quiet"]) == 0
    return out


def test_a_student_is_a_run_that_draws_in_its_calls(student, trained, capsys):
    config = json.loads((student / "config.json").read_text())
    assert config["prediction"] == "v" and config["unet"]["guidance_input"] is True
    assert config["train"]["distill_calls"] == 2 and config["finetuned_from"]["run"] == str(trained.resolve())
    run = load_run(student)
    calls = []
    net = run.net
    run.net = lambda *a, **k: calls.append(1) or net(*a, **k)
    run.net.cfg = net.cfg
    run.net.parameters = net.parameters
    images = generate(run, 4, label=3)
    assert images.shape == (4, 1, 16, 16) and len(calls) == 2  # one call a step: guidance is an input
    for guidance in (1.0, 4.0):
        assert torch.isfinite(generate(load_run(student), 2, label=1, guidance=guidance)).all()
    capsys.readouterr()
    assert main(["sample", str(student), "--n", "4", "--out", str(student / "s.png")]) == 0
    assert "2 network calls an image" in capsys.readouterr().out
    assert main(["interpolate", str(student), "--seeds", "0,1", "--n", "3", "--label", "2", "--out", str(student / "i.png")]) == 0


@pytest.mark.parametrize("argv,words", [
    (["sample", "{s}", "--steps", "5"], "distilled to draw in 2 network calls"),
    (["sample", "{s}", "--sampler", "dpmpp-2m"], "distilled to draw in 2 network calls"),
    (["sample", "{s}", "--guidance", "9"], "guidance scales in [1, 4]"),
    (["img2img", "{s}", "--image", "{img}", "--strength", "0.5", "--out", "{s}/x.png"], "edit images with its teacher"),
    (["export", "{s}", "{s}-d", "--to", "diffusers"], "distilled student"),
    (["distill", "{s}", "--out", "{s}-again", "--steps", "2"], "already a distilled student"),
    (["distill", "{t}", "--out", "{s}", "--steps", "2"], "exists"),
    (["distill", "{t}", "--out", "{s}", "--steps", "9", "--calls", "4", "--resume"], "distill_calls"),
])
def test_a_student_refuses_what_it_was_not_taught_in_one_line(student, trained, capsys, argv, words):
    from PIL import Image

    img = student.parent / "digit.png"
    Image.new("L", (16, 16)).save(img)
    line = fails_cleanly(capsys, [a.format(s=student, t=trained, img=img) for a in argv])
    assert words in line, line


def test_distill_refuses_an_upscale_teacher(sr_run, tmp_path, capsys):
    line = fails_cleanly(capsys, ["distill", sr_run, "--out", tmp_path / "s", "--steps", "2"])
    assert "upscale run" in line and not (tmp_path / "s").exists()


def test_a_resumed_student_takes_the_steps_of_an_uninterrupted_one(trained, tmp_path):
    """Stopped after 2 of 4 steps and resumed, a student ends with the weights of one trained straight
    through: its batches are the teacher's trajectories of each step's own seed."""
    from undiffuse.training import TrainConfig, Trainer

    cfg = TrainConfig.flat(base=str(trained), distill_calls=1, steps=4, batch_size=8, grids=0)
    Trainer.create(cfg, tmp_path / "a").train(progress=False)
    Trainer.create(cfg, tmp_path / "b").train(until=2, progress=False)
    Trainer.resume(tmp_path / "b").train(progress=False)
    a, b = (load_run(tmp_path / k, precision="fp32").net.state_dict() for k in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_page_draws_a_student_in_its_calls_on_one_branch(student):
    """The web page's default for a student is its K calls, and its work bound counts one pass a call."""
    from undiffuse.guidance import branches
    from undiffuse.serve.requests import parse_generate

    run = load_run(student)
    job = parse_generate(run, {"n": 4, "label": "3"})
    assert job.total == 2 and job.options["steps"] is None
    assert branches(run.net, job.options["cond"], job.options["guidance"]) == 1
    teacher = load_run(json.loads((student / "config.json").read_text())["finetuned_from"]["run"])
    teacher_job = parse_generate(teacher, {"n": 4, "label": "3"})
    assert branches(teacher.net, teacher_job.options["cond"], teacher_job.options["guidance"]) == 2
