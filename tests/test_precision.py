"""Precision chosen by the machine (precision.py): every branch of `choose` with the probe's verdict
injected, the probe's timing against a fake clock, the CPU flags, and what training and sampling do
with the choice: bf16 runs through the network's passes, resumes bit for bit within its precision, and
is recorded with its reason. No test asserts a timing."""
import json

import pytest
import torch

from undiffuse import checkpoint as ckpt
from undiffuse import precision as prec
from undiffuse.cli import main
from undiffuse.errors import UsageError
from undiffuse.generation import generate, load_run, sampling_precision
from undiffuse.precision import FP32, Precision, choose, measure, units_in_cpuinfo
from undiffuse.training import TrainConfig, Trainer
from undiffuse.training import sizing

from cli_helpers import TRAIN, fails_cleanly

CPU = torch.device("cpu")


def _timer(fp32: float, other: float, calls: list | None = None):
    """A probe that reports fixed seconds: fp32 and the other precision asked."""
    def timer(workload, names):
        if calls is not None:
            calls.append(names)
        return {n: fp32 if n == "fp32" else other for n in names}
    return timer


@pytest.fixture
def auto(monkeypatch):
    """--precision auto as on a machine without UNDIFFUSE_PRECISION (conftest sets it to fp32)."""
    monkeypatch.delenv(prec.ENVIRONMENT, raising=False)


# --- choose -------------------------------------------------------------------------------------

def test_a_cpu_without_bf16_units_keeps_fp32_without_timing_anything(auto):
    calls = []
    p = choose("auto", CPU, lambda p: None, units=(), timer=_timer(1.0, 0.1, calls))
    assert p.name == "fp32" and "no bf16 units" in p.reason and calls == []


@pytest.mark.parametrize("units", [("amx_bf16", "avx512_bf16"), None])  # None: flags that cannot be read
def test_bf16_units_choose_bf16_when_the_probe_times_it_faster(auto, units):
    p = choose("auto", CPU, lambda p: None, units=units, timer=_timer(1.0, 0.5))
    assert p.name == "bf16" and "2.00x" in p.reason and p.warning is None
    assert ("amx_bf16" in p.reason) == (units is not None)


@pytest.mark.parametrize("bf16_seconds", [1.0, 0.95, 2.0])  # not faster by the margin: fp32
def test_bf16_units_keep_fp32_when_the_probe_does_not_time_bf16_faster_by_the_margin(auto, bf16_seconds):
    p = choose("auto", CPU, lambda p: None, units=("avx512_bf16",), timer=_timer(1.0, bf16_seconds))
    assert p.name == "fp32" and f"{1 / bf16_seconds:.2f}x" in p.reason


@pytest.mark.parametrize("asked", ["fp32", "bf16"])
def test_an_explicit_precision_wins_and_times_nothing(auto, asked):
    calls = []
    for units in ((), ("amx_bf16",)):
        p = choose(asked, CPU, lambda p: None, units=units, timer=_timer(1.0, 0.1, calls))
        assert p.name == asked and p.reason == "asked for"
    assert calls == []


def test_bf16_asked_for_on_a_cpu_without_units_is_warned():
    assert "no bf16 units" in choose("bf16", CPU, units=()).warning
    assert choose("bf16", CPU, units=("avx512_bf16",)).warning is None


def test_fp16_on_a_cpu_is_allowed_with_the_measured_ratio_when_it_is_slower():
    slow = choose("fp16", CPU, lambda p: None, units=(), timer=_timer(1.0, 4.0))
    assert slow.name == "fp16" and "0.25x the speed of fp32" in slow.warning
    fast = choose("fp16", CPU, lambda p: None, units=(), timer=_timer(1.0, 0.5))
    assert fast.name == "fp16" and fast.warning is None


def test_cuda_takes_bf16_where_the_gpu_has_it_natively(auto, monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose("auto", cuda).name == "bf16" and "8.0" in choose("auto", cuda).reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert choose("auto", cuda).name == "fp32"
    assert choose("fp16", cuda).name == "fp16"


def test_the_environment_says_what_auto_means(monkeypatch):
    monkeypatch.setenv(prec.ENVIRONMENT, "bf16")
    assert choose("auto", CPU, units=()).name == "bf16"
    assert choose("fp32", CPU).name == "fp32"  # an explicit precision still wins
    monkeypatch.setenv(prec.ENVIRONMENT, "fp8")
    with pytest.raises(UsageError, match="UNDIFFUSE_PRECISION must be one of fp32, bf16, fp16"):
        choose("auto", CPU)
    with pytest.raises(UsageError, match="precision must be one of auto"):
        choose("int8", CPU)


def test_measure_alternates_the_precisions_and_takes_the_median_after_an_untimed_run():
    now = [0.0]
    seconds = {"fp32": iter([9.0, 1.0, 5.0, 1.2]), "bf16": iter([9.0, 0.5, 0.4, 7.0])}
    order = []

    def workload(p: Precision):
        order.append(p.name)
        now[0] += next(seconds[p.name])

    times = measure(workload, ("fp32", "bf16"), repeats=3, clock=lambda: now[0])
    assert order == ["fp32", "bf16"] * 4
    assert times == pytest.approx({"fp32": 1.2, "bf16": 0.5})


def test_the_bf16_units_are_read_from_the_cpu_flags():
    assert units_in_cpuinfo("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n") == \
        ("amx_bf16", "avx512_bf16")
    assert units_in_cpuinfo("flags : fpu sse2 avx2 fma\n") == ()
    assert units_in_cpuinfo("Features\t: fp asimd sve bf16 i8mm\n") == ("bf16",)
    assert units_in_cpuinfo("model name: something\n") is None
    assert prec.cpu_bf16_units() is None or isinstance(prec.cpu_bf16_units(), tuple)


def test_autocast_runs_the_reduced_type_and_fp32_runs_none():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with Precision("bf16", "test").autocast("cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with FP32.autocast("cpu"):
        assert (x @ w).dtype == torch.float32


# --- training -----------------------------------------------------------------------------------

def _cfg(**kw):
    base = dict(data="digits", image_size=16, steps=6, batch_size=12, model="tiny", grids=0, seed=4, lr=1e-3,
                checkpoint_minutes=1e-6)
    return TrainConfig.flat(**{**base, **kw})


def _probe(monkeypatch, units, fp32: float, bf16: float, calls: list | None = None):
    """Inject the machine: its bf16 units, and what the training probe measures."""
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: units)
    monkeypatch.setattr(sizing, "measure", lambda workload, names, clock=None: _timer(fp32, bf16, calls)(workload,
                                                                                                          names))


def _conv_dtypes(model) -> list:
    seen = []
    model.conv_in.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("verdict", ["bf16", "fp32"])
def test_auto_training_follows_the_probe_and_records_the_choice_and_why(auto, monkeypatch, tmp_path, verdict):
    _probe(monkeypatch, ("avx512_bf16",), 1.0, 0.5 if verdict == "bf16" else 0.98)
    trainer = Trainer.create(_cfg(steps=2), tmp_path / "r")
    seen = _conv_dtypes(trainer.model)
    trainer.train(progress=False)
    assert trainer.learner.precision.name == verdict
    assert set(seen) == {torch.bfloat16 if verdict == "bf16" else torch.float32}
    config = json.loads((tmp_path / "r" / ckpt.CONFIG).read_text())
    assert config["train"]["precision"] == "auto"  # what was asked; what was chosen, and why:
    assert config["precision"]["name"] == verdict and "probe of this model" in config["precision"]["reason"]
    card = (tmp_path / "r" / "README.md").read_text()
    assert f"precision {verdict} (bf16 units (avx512_bf16)" in card


def test_a_machine_without_bf16_units_trains_in_fp32_and_times_no_bf16_step(auto, monkeypatch, tmp_path):
    calls = []
    _probe(monkeypatch, (), 1.0, 0.1, calls)
    trainer = Trainer.create(_cfg(steps=1, minutes=None), tmp_path / "r")
    assert trainer.learner.precision.name == "fp32" and "no bf16 units" in trainer.learner.precision.reason
    assert all("bf16" not in names for names in calls)


def test_a_time_budget_times_each_size_in_the_precision_it_chooses(auto, monkeypatch, tmp_path):
    calls = []
    _probe(monkeypatch, ("amx_bf16",), 0.02, 0.01, calls)
    trainer = Trainer.create(_cfg(steps=None, minutes=0.02, model="tiny"), tmp_path / "r")
    assert trainer.learner.precision.name == "bf16" and calls == [("fp32", "bf16")]
    # 1.2 s at 0.0105 s a step (0.01 and 5% for the optimizer): about a hundred steps planned
    assert trainer.plan.steps > 80


def test_bf16_training_resumes_bit_for_bit_within_its_precision(auto, monkeypatch, tmp_path):
    _probe(monkeypatch, ("amx_bf16",), 1.0, 0.5)
    straight = Trainer.create(_cfg(), tmp_path / "straight")
    straight.train(progress=False)
    cut = Trainer.create(_cfg(), tmp_path / "cut")
    cut.train(until=3, progress=False)
    _probe(monkeypatch, ("amx_bf16",), 1.0, 5.0)  # the machine now says fp32: the run keeps its bf16
    resumed = Trainer.resume(tmp_path / "cut")
    assert resumed.step == 3 and resumed.learner.precision.name == "bf16"
    resumed.train(progress=False)
    for name in (ckpt.MODEL, ckpt.EMA):
        a, b = straight.learner.tensors(0)[name], resumed.learner.tensors(0)[name]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    fp32 = Trainer.create(_cfg(precision="fp32"), tmp_path / "fp32")
    fp32.train(progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(fp32.model.parameters(), straight.model.parameters()))


def test_resuming_with_the_precision_auto_chose_agrees_and_another_is_refused(auto, monkeypatch, tmp_path, capsys):
    _probe(monkeypatch, ("amx_bf16",), 1.0, 0.5)
    command = ["train", *TRAIN, "--out", str(tmp_path / "r")]
    assert main([*command, "--steps", "2"]) == 0
    assert main([*command, "--steps", "3", "--precision", "bf16", "--resume"]) == 0
    err = fails_cleanly(capsys, [*command, "--steps", "4", "--precision", "fp32", "--resume"])
    assert "precision 'bf16' (auto), not 'fp32'" in err


def test_a_run_that_records_no_precision_trained_in_its_option(tmp_path):
    run = tmp_path / "r"
    Trainer.create(_cfg(steps=1, precision="bf16"), run).train(progress=False)
    config = json.loads((run / ckpt.CONFIG).read_text())
    assert config["precision"] == {"name": "bf16", "reason": "asked for"}
    del config["precision"]
    (run / ckpt.CONFIG).write_text(json.dumps(config))
    assert Trainer.resume(run).learner.precision.name == "bf16"
    config["train"]["precision"] = "auto"
    (run / ckpt.CONFIG).write_text(json.dumps(config))
    with pytest.raises(ckpt.CheckpointError, match="train.precision must be one of fp32, bf16, fp16"):
        Trainer.resume(run)


def test_the_dry_run_says_which_precision_and_why(auto, monkeypatch, capsys):
    _probe(monkeypatch, ("avx512_bf16",), 1.0, 0.5)
    assert main(["train", *TRAIN, "--out", "never-written", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "precision: bf16 (bf16 units (avx512_bf16); a probe of this model ran bf16 at 2.00x" in out
    assert main(["train", *TRAIN[:4], "--minutes", "1", "--out", "never-written", "--dry-run"]) == 0
    assert "precision: auto, chosen when training starts" in capsys.readouterr().out


def test_auto_with_the_real_probe_records_a_reason_that_fits_the_machine(auto, tmp_path):
    trainer = Trainer.create(_cfg(steps=1), tmp_path / "r")
    p = trainer.learner.precision
    if prec.cpu_bf16_units() == ():
        assert p.name == "fp32" and "no bf16 units" in p.reason
    else:
        assert "a probe of this model ran bf16 at" in p.reason


# --- sampling -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prec") / "run"
    Trainer.create(_cfg(steps=20, precision="fp32", checkpoint_minutes=10), folder).train(progress=False)
    return folder


def test_a_run_trained_in_fp32_samples_in_bf16_and_the_sampler_sees_fp32(run, auto, monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: ("amx_bf16",))
    monkeypatch.setattr(prec, "measure", lambda workload, names: _timer(1.0, 0.5)(workload, names))
    loaded = load_run(run)
    assert loaded.precision.name == "bf16" and "2.00x" in loaded.precision.reason
    seen = _conv_dtypes(loaded.net)
    steps = []
    bf16 = generate(loaded, 10, labels=list(range(10)), steps=5, seed=1,
                    callback=lambda info: steps.append(info["x"].dtype))
    assert set(seen) == {torch.bfloat16} and set(steps) == {torch.float32}
    fp32 = generate(load_run(run, precision="fp32"), 10, labels=list(range(10)), steps=5, seed=1)
    assert bf16.dtype == fp32.dtype == torch.float32
    difference = (bf16 - fp32).abs()
    assert 0 < difference.max() and difference.mean() < 0.05  # the same images to bf16's rounding


def test_a_bf16_run_samples_in_fp32_where_the_machine_has_no_units(run, auto, monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: ())
    Trainer.create(_cfg(steps=2, precision="bf16"), tmp_path / "b").train(progress=False)
    loaded = load_run(tmp_path / "b")
    assert loaded.precision.name == "fp32"
    assert generate(loaded, 2, labels=[0, 1], steps=2).isfinite().all()


def test_the_sampling_probe_times_the_network_with_its_null_conditions(run, auto, monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: ("amx_bf16",))
    loaded = load_run(run)
    shapes = []
    loaded.net.conv_in.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    assert sampling_precision(loaded.net, "auto", 16, batch=5).name in ("fp32", "bf16")
    assert shapes and set(shapes) == {(5, 1, 16, 16)}


def test_sample_takes_precision_and_warns_of_fp16_on_a_cpu_with_the_measurement(run, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(prec, "measure", lambda workload, names: _timer(1.0, 3.0)(workload, names))
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--precision", "fp16", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 samples (fp16, " in captured.out and "fp16 ran at 0.33x the speed of fp32" in captured.err
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--precision", "fp32", "--out", str(out)]) == 0
    assert "2 samples (fp32, " in capsys.readouterr().out
    assert "invalid choice" in fails_cleanly(capsys, ["sample", str(run), "--precision", "fp8"])


def test_where_auto_timed_the_precision_the_faster_memory_layout_is_kept(run, auto, monkeypatch):
    import undiffuse.generation as gen

    monkeypatch.setattr(prec, "cpu_bf16_units", lambda: ("amx_bf16",))
    monkeypatch.setattr(prec, "measure", lambda workload, names: _timer(1.0, 0.5)(workload, names))
    reference = generate(load_run(run, precision="bf16"), 4, labels=[0, 1, 2, 3], steps=3, seed=2)
    for nhwc_seconds, layout in ((0.5, torch.channels_last), (0.95, torch.contiguous_format)):
        monkeypatch.setattr(gen, "time_alternately", lambda work, t=nhwc_seconds: {"nchw": 1.0, "nhwc": t})
        loaded = load_run(run)
        assert loaded.precision.name == "bf16" and loaded.precision.probed
        assert loaded.net.conv_in.weight.is_contiguous(memory_format=layout)
        images = generate(loaded, 4, labels=[0, 1, 2, 3], steps=3, seed=2)
        difference = (images - reference).abs()  # the same images, to bf16's rounding in other kernels
        assert difference.mean() < 0.01 and difference.max() < 0.25
    # an explicit precision, or auto that timed nothing, keeps the network as it was
    loaded = load_run(run, precision="bf16")
    assert not loaded.precision.probed and loaded.net.conv_in.weight.is_contiguous()
