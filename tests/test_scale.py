"""Train big: data-parallel processes, gradient accumulation, mixed precision, compile, memory options.

Each variant must give the update of the plain single-process fp32 run (to float tolerance), since
it only changes how the same batch is computed.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from undiffuse import checkpoint as ckpt
from undiffuse.training.budget import REFIT_EVERY
from undiffuse.training.distributed import World, shard
from undiffuse.training.recipe import unet_config
from undiffuse.training import TrainConfig, Trainer, read_log
from undiffuse.unet import UNet

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(name, None)


def _cfg(**kw):
    base = dict(data="digits", image_size=16, steps=4, batch_size=12, model="tiny", grids=0, seed=4, lr=1e-3)
    return TrainConfig.flat(**{**base, **kw})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = ckpt.load_checkpoint(run)
    return {f"{name}/{k}": v for name, part in tensors.items() if name != ckpt.STATE for k, v in part.items()}


def _assert_close(a: dict, b: dict, atol=2e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < atol, worst


@pytest.mark.parametrize("n", [1, 5, 12, 13])
def test_shards_cover_each_item_once(n):
    for size in (1, 2, 3, 5):
        parts = [list(range(n))[shard(n, World(rank, size))] for rank in range(size)]
        assert sum(parts, []) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_gloo_processes_under_torchrun_equal_one_process(tmp_path):
    """Same global batch (12, split 6 + 6), same learning rate: the same weights after 4 steps."""
    args = ["train", "--data", "digits", "--image-size", "16", "--steps", "4", "--batch-size", "12",
            "--model", "tiny", "--grids", "0", "--seed", "4", "--lr", "1e-3", "--quiet"]
    single = tmp_path / "single"
    Trainer.create(_cfg(), single).train(progress=False)
    run = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "undiffuse", *args, "--out", str(run)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_close(_weights(single), _weights(run))
    assert done.stdout.count("trained 4 steps") == 1  # rank 0 alone reports, logs and saves
    assert "2 processes" in done.stdout
    assert read_log(run)[0] == [1, 2, 3, 4]
    assert json.loads((run / ckpt.CONFIG).read_text())["train"]["batch_size"] == 12


def test_ranks_agree_on_the_model_and_steps_a_time_budget_picks(tmp_path):
    """Rank 0 times the sizes, re-fits the step count every REFIT_EVERY steps and decides when the
    deadline is reached; had the ranks disagreed, one would wait forever for the other's gradients
    (the timeout would fail the test)."""
    run = tmp_path / "budget"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "undiffuse", "train", "--data", "digits", "--image-size", "16", "--minutes", "0.2",
                           "--batch-size", "8", "--grids", "0", "--quiet", "--out", str(run)],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run / ckpt.CONFIG).read_text())
    steps = read_log(run)[0]
    assert steps[-1] == config["plan"]["steps"] > REFIT_EVERY  # re-fitted, and every rank ran to the same end
    assert steps == sorted(set(steps))


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    whole = Trainer.create(_cfg(), tmp_path / "a")
    whole.train(progress=False)
    accumulated = Trainer.create(_cfg(grad_accum=4), tmp_path / "b")
    accumulated.train(progress=False)
    _assert_close(whole.model.state_dict(), accumulated.model.state_dict())
    _assert_close(whole.ema.state_dict(), accumulated.ema.state_dict())
    assert read_log(tmp_path / "a")[1] == pytest.approx(read_log(tmp_path / "b")[1], rel=1e-5)


def test_channels_last_gives_the_same_run(tmp_path):
    plain = Trainer.create(_cfg(steps=2), tmp_path / "a")
    plain.train(progress=False)
    nhwc = Trainer.create(_cfg(steps=2, channels_last=True), tmp_path / "b")
    assert nhwc.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc.train(progress=False)
    _assert_close(plain.model.state_dict(), nhwc.model.state_dict())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from undiffuse.conditions import Classes, Condition

    torch.manual_seed(0)
    net = UNet(unet_config("tiny", 16, 1, 10))
    x, t = torch.randn(4, 1, 16, 16), torch.randint(1000, (4,))
    context = Condition(Classes.of(torch.eye(10)[:4]))
    results = []
    for checkpointing in (False, True):
        net.grad_checkpointing = checkpointing
        net.zero_grad()
        loss = net(x, t, context).pow(2).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and len(grads_a) == len(grads_b) > 30
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(tmp_path, precision):
    run = tmp_path / precision
    trainer = Trainer.create(_cfg(steps=6, precision=precision, checkpoint_minutes=1e-6), run)
    assert trainer.learner.scaler.is_enabled() == (precision == "fp16")
    trainer.train(until=3, progress=False)
    scale = trainer.learner.scaler.get_scale() if precision == "fp16" else None
    resumed = Trainer.resume(run)
    assert resumed.step == 3
    if precision == "fp16":
        assert resumed.learner.scaler.get_scale() == scale  # the loss scale is part of the checkpoint
    result = resumed.train(progress=False)
    assert result.steps == 6 and torch.isfinite(torch.tensor(read_log(run)[1])).all()
    fp32 = Trainer.create(_cfg(steps=6), tmp_path / "fp32")
    fp32.train(progress=False)
    # the same run to the precision of the format: close, not equal
    _assert_close(fp32.model.state_dict(), resumed.model.state_dict(), atol=0.05)


def test_compile_flag_wraps_the_network(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module, **kwargs):  # the real one needs a C compiler on the CPU: see the slow test
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(importlib.import_module("undiffuse.training.setup"), "COMPILE_ON_CPU", True)
    trainer = Trainer.create(_cfg(steps=1, compile=True), tmp_path / "r")
    assert compiled == [trainer.model] and trainer.learner.net is trainer.model
    assert json.loads((tmp_path / "r" / ckpt.CONFIG).read_text())["train"]["compile"] is True


def test_compile_is_refused_on_a_cpu_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="--compile is for CUDA"):
        Trainer.create(_cfg(steps=1, compile=True), tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_compiled_training_equals_eager(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("undiffuse.training.setup"), "COMPILE_ON_CPU", True)
    eager = Trainer.create(_cfg(steps=2), tmp_path / "a")
    eager.train(progress=False)
    compiled = Trainer.create(_cfg(steps=2, compile=True), tmp_path / "b")
    compiled.train(progress=False)
    _assert_close(eager.model.state_dict(), compiled.model.state_dict(), atol=1e-4)
