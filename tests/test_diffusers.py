"""Models in and out through diffusers folders: exported adm runs give diffusers the same eps (with
guidance through the null class), imported UNet2DModels give undiffuse the same eps, a round trip
samples the same images, and what cannot be expressed is refused in one line. Offline throughout."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is a local folder

import diffusers  # noqa: E402  (a test dependency)

from undiffuse import checkpoint as ckpt  # noqa: E402
from undiffuse.cli import main  # noqa: E402
from undiffuse.conditions import Classes, Condition, one_hot  # noqa: E402
from undiffuse.guidance import denoiser  # noqa: E402
from undiffuse.generation import generate, load_run  # noqa: E402
from undiffuse.interop.folders import export_run, import_folder  # noqa: E402
from undiffuse.run import Plan, RunRecord, ScheduleSpec, read_run, write_run  # noqa: E402
from undiffuse.unet import UNet, UNetConfig  # noqa: E402

from cli_helpers import TRAIN, fails_cleanly  # noqa: E402

TOL = 1e-4


def _random_run(folder, *, classes=0, prediction="eps", schedule=ScheduleSpec("linear", 1000), **unet):
    """A run folder of an adm U-Net with random (non-zero) weights, 8x8, one channel."""
    cfg = UNetConfig(**{**dict(channels=1, base=16, mults=(1, 2, 2), blocks=1, attention=(1, 2), head_channels=16,
                               context_dim=classes, block_style="adm", context_mode="add"), **unet})
    torch.manual_seed(0)
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    record = RunRecord(unet=cfg, model_size="tiny", schedule=schedule, prediction=prediction, image_size=8, channels=1,
                       class_names=tuple(f"c{i}" for i in range(classes)), data_source="digits", num_images=10,
                       plan=Plan(10, 1e-3, 1, 0.9), train={})
    folder.mkdir()
    write_run(folder, record)
    for name in (ckpt.EMA, ckpt.MODEL):
        save_file(net.state_dict(), str(folder / name), metadata={"step": "10"})
    return folder


def _inputs(n=6, k=0, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(n, 1, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g)
    return x, t, torch.randint(0, k, (n,), generator=g) if k else None


@pytest.fixture(scope="module")
def adm_run(tmp_path_factory):
    """A tiny conditional adm run trained from the command line (8 steps on the 8x8 digits at 16x16)."""
    run = tmp_path_factory.mktemp("adm") / "run"
    assert main(["train", *TRAIN, "--block-style", "adm", "--out", str(run)]) == 0
    return run


def test_the_block_style_flag_is_recorded_once(adm_run):
    config = json.loads((adm_run / ckpt.CONFIG).read_text())
    assert config["unet"]["block_style"] == "adm" and "block_style" not in config["train"]


@torch.no_grad()
def test_a_conditional_export_gives_diffusers_the_same_eps_and_guidance(tmp_path):
    run = _random_run(tmp_path / "run", classes=3, prediction="v")
    done = export_run(run, tmp_path / "out")
    assert done.max_eps_difference < TOL and done.classes == 3
    assert not (tmp_path / "out" / "model_index.json").exists()
    assert not list((tmp_path / "out").rglob("*.bin"))
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "out", subfolder="unet").eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "out", subfolder="scheduler")
    ours = load_run(run)
    assert unet.config.num_class_embeds == 4  # 3 classes and the null
    assert (scheduler.config.prediction_type, scheduler.config.timestep_spacing) == ("v_prediction", "trailing")
    assert torch.allclose(scheduler.betas.double(), ours.schedule.betas, rtol=1e-6)
    x, t, labels = _inputs(k=3)
    cond = ours.net(x, t, Condition(Classes.of(one_hot(labels, 3))))
    null = ours.net(x, t, None)
    assert (cond - unet(x, t, class_labels=labels).sample).abs().max() < TOL
    assert (null - unet(x, t, class_labels=torch.full_like(labels, 3)).sample).abs().max() < TOL
    # guidance in diffusers: the null class id K as the unconditional branch
    eps_c, eps_n = (unet(x, t, class_labels=ids).sample for ids in (labels, torch.full_like(labels, 3)))
    guided_ours, _ = denoiser(ours.net, ours.schedule, prediction="v", cond=Condition(Classes.of(one_hot(labels, 3))),
                              guidance=2.0)(x, t)
    guided_theirs, _ = denoiser(lambda x, t, cond=None: eps_n + 2.0 * (eps_c - eps_n), ours.schedule, prediction="v")(x, t)
    assert (guided_ours - guided_theirs).abs().max() < 3 * TOL


@torch.no_grad()
def test_an_unconditional_export_loads_as_a_ddpm_pipeline(tmp_path):
    run = _random_run(tmp_path / "run", schedule=ScheduleSpec("cosine", 50))
    assert main(["export", str(run), "--to", "diffusers", str(tmp_path / "out")]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "out")
    x, t, _ = _inputs()
    t = t % 50
    assert (load_run(run).net(x, t) - pipe.unet(x, t).sample).abs().max() < TOL
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1)


@torch.no_grad()
def test_raw_weights_are_exported_with_the_flag(tmp_path):
    run = _random_run(tmp_path / "run")
    save_file({k: v + 0.01 for k, v in ckpt.load_tensors(run / ckpt.MODEL)[0].items()}, str(run / ckpt.MODEL),
              metadata={"step": "10"})
    export_run(run, tmp_path / "ema")
    export_run(run, tmp_path / "raw", weights="raw")
    a, b = (diffusers.UNet2DModel.from_pretrained(tmp_path / w, subfolder="unet") for w in ("ema", "raw"))
    x, t, _ = _inputs()
    assert (a(x, t).sample - b(x, t).sample).abs().max() > 1e-3
    assert (load_run(run, weights="raw").net(x, t) - b(x, t).sample).abs().max() < TOL


def _random_unet2d(folder, *, classes=None, **config):
    """A small UNet2DModel with diffusers' own defaults where undiffuse agrees (flip_sin_to_cos=True)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**{**dict(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=4, attn_norm_num_groups=4, resnet_time_scale_shift="scale_shift",
        freq_shift=0, num_class_embeds=classes), **config})
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
        folder / "scheduler")
    return unet.eval()


@torch.no_grad()
def test_an_imported_unet2dmodel_gives_undiffuse_the_same_eps(tmp_path):
    unet = _random_unet2d(tmp_path / "hub", classes=5)
    assert unet.config.flip_sin_to_cos  # diffusers' default, mapped by reordering the first layer's inputs
    done = import_folder(tmp_path / "hub", tmp_path / "run")
    assert done.max_eps_difference < TOL and done.classes == 4
    record = read_run(tmp_path / "run")
    assert (record.schedule.name, record.prediction, record.unet.block_style) == ("cosine", "v", "adm")
    assert record.class_names == ("0", "1", "2", "3")
    run = load_run(tmp_path / "run")
    g = torch.Generator().manual_seed(3)
    x, t, labels = torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 3, 2])
    assert (run.net(x, t, Condition(Classes.of(one_hot(labels, 4)))) - unet(x, t, class_labels=labels).sample).abs().max() < TOL
    assert (run.net(x, t, None) - unet(x, t, class_labels=torch.full_like(labels, 4)).sample).abs().max() < TOL
    images = generate(run, 2, labels=[1, 2], steps=3, guidance=2.0)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_a_ddpm_pipeline_folder_imports_from_the_command_line(tmp_path, capsys):
    unet = _random_unet2d(tmp_path / "unused")
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(
        tmp_path / "pipe", safe_serialization=True)
    assert main(["import", str(tmp_path / "pipe"), "--out", str(tmp_path / "run"), "--data", "cifar"]) == 0
    assert "max |eps difference|" in capsys.readouterr().out
    record = read_run(tmp_path / "run")
    assert (record.schedule.name, record.prediction, record.class_names, record.data_source) == ("linear", "eps", (), "cifar")
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.npy")]) == 0


def test_an_imported_model_fine_tunes_and_the_fine_tuned_run_resumes(tmp_path, capsys):
    """Models that travel both ways: a UNet2DModel from elsewhere trains on here, from its own weights."""
    unet = _random_unet2d(tmp_path / "hub", in_channels=1, out_channels=1)
    import_folder(tmp_path / "hub", tmp_path / "imported")
    tuned = tmp_path / "tuned"
    assert main(["finetune", str(tmp_path / "imported"), "--data", "digits", "--steps", "1", "--lr", "1e-12",
                 "--batch-size", "4", "--grids", "0", "--quiet", "--out", str(tuned)]) == 0
    record, base = read_run(tuned), read_run(tmp_path / "imported")
    assert record.unet == base.unet and record.model_size == "imported" and record.image_size == 16
    assert record.finetuned_from.run == str((tmp_path / "imported").resolve())
    x, t, _ = _inputs(4, size=16)
    with torch.no_grad():  # the weights it started from
        assert (load_run(tuned).net(x, t, None) - unet(x, t).sample).abs().max() < TOL
    assert main(["train", "--out", str(tuned), "--resume", "--steps", "2", "--quiet"]) == 0
    assert ckpt.newest_step(tuned) == 2
    err = fails_cleanly(capsys, ["train", "--out", tmp_path / "imported", "--resume"])
    assert "was imported" in err and "nothing to resume" in err and "undiffuse finetune" in err


def test_export_then_import_samples_the_same_images(adm_run, tmp_path):
    export_run(adm_run, tmp_path / "out")
    import_folder(tmp_path / "out", tmp_path / "back")
    a, b = load_run(adm_run), load_run(tmp_path / "back")
    assert b.class_names == a.class_names and b.schedule.T == a.schedule.T
    options = dict(labels=[3, 7, 0], sampler="ddim", steps=5, guidance=2.0, seed=4)
    assert torch.allclose(generate(a, 3, **options), generate(b, 3, **options), atol=1e-5)


# --- refusals: one line, exit 2 ---------------------------------------------------------------------

def test_a_film_run_is_refused_with_the_option_named(tmp_path, capsys):
    film = tmp_path / "film"
    assert main(["train", *TRAIN, "--steps", "1", "--block-style", "film", "--out", str(film)]) == 0
    err = fails_cleanly(capsys, ["export", film, "--to", "diffusers", tmp_path / "out"])
    assert "film" in err and "--block-style adm" in err
    assert not (tmp_path / "out").exists()


@torch.no_grad()
def test_a_run_trained_with_the_defaults_exports_and_loads_in_diffusers(trained, tmp_path):
    """conftest's `trained` names no block style: the default run leaves in one command."""
    assert read_run(trained).unet.block_style == "adm"
    assert main(["export", str(trained), "--to", "diffusers", str(tmp_path / "out")]) == 0
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "out", subfolder="unet").eval()
    ours = load_run(trained)
    x, t, labels = _inputs(k=10, size=16)
    theirs = unet(x, t, class_labels=labels).sample
    assert (ours.net(x, t, Condition(Classes.of(one_hot(labels, 10)))) - theirs).abs().max() < TOL


def test_a_run_trained_on_context_vectors_is_refused(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8))
    contexts = np.zeros((16, 3))
    contexts[:, 0], contexts[::2, 2] = 1, 1  # multi-hot attributes
    np.save(tmp_path / "contexts.npy", contexts)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "images.npy"), "--labels", str(tmp_path / "contexts.npy"), "--steps", "1",
                 "--batch-size", "4", "--model", "tiny", "--grids", "0", "--quiet", "--block-style", "adm",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert "context vectors" in fails_cleanly(capsys, ["export", run, "--to", "diffusers", tmp_path / "out"])


def test_a_padded_size_is_refused(tmp_path, capsys):
    run = _random_run(tmp_path / "run")
    config = json.loads((run / ckpt.CONFIG).read_text())
    config["image_size"] = 10
    (run / ckpt.CONFIG).write_text(json.dumps(config))
    assert "pads" in fails_cleanly(capsys, ["export", run, "--to", "diffusers", tmp_path / "out"])


def test_a_pickle_only_folder_is_refused(tmp_path, capsys):
    unet = _random_unet2d(tmp_path / "hub")
    (tmp_path / "hub" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (tmp_path / "hub" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"never unpickled")
    assert unet is not None
    assert "pickled" in fails_cleanly(capsys, ["import", tmp_path / "hub", "--out", tmp_path / "run"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ["CrossAttnDownBlock2D", "AttnDownBlock2D"]),
    ("resnet_time_scale_shift", "default"),
    ("freq_shift", 1),
    ("attn_norm_num_groups", None),
    ("_class_name", "UNet2DConditionModel"),
    ("block_out_channels", ""),
    ("block_out_channels", "abc"),
    ("block_out_channels", []),
    ("block_out_channels", [32.0, 64]),
    ("attention_head_dim", 0),
    ("in_channels", 1.0),
    ("layers_per_block", 10**30),
    ("dropout", "none"),
])
def test_a_config_undiffuse_cannot_express_is_refused_by_key(tmp_path, capsys, key, value):
    _random_unet2d(tmp_path / "hub")
    path = tmp_path / "hub" / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    assert key in fails_cleanly(capsys, ["import", tmp_path / "hub", "--out", tmp_path / "run"])


def test_an_existing_out_is_never_replaced_without_overwrite(adm_run, tmp_path, capsys):
    export_run(adm_run, tmp_path / "out")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert "already exists" in fails_cleanly(capsys, ["import", tmp_path / "out", "--out", tmp_path / "run"])
    assert "not an undiffuse run" in fails_cleanly(capsys, ["import", tmp_path / "out", "--out", tmp_path / "run",
                                                            "--overwrite"])
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert "already exists" in fails_cleanly(capsys, ["export", adm_run, "--to", "diffusers", tmp_path / "out"])
    assert main(["export", str(adm_run), "--to", "diffusers", str(tmp_path / "out"), "--overwrite"]) == 0
    assert main(["import", str(tmp_path / "out"), "--out", str(tmp_path / "back")]) == 0
    assert main(["import", str(tmp_path / "out"), "--out", str(tmp_path / "back"), "--overwrite"]) == 0


def test_without_diffusers_the_commands_say_how_to_install_it(adm_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    err = fails_cleanly(capsys, ["export", adm_run, "--to", "diffusers", tmp_path / "out"])
    assert "pip install diffusers" in err


def test_an_upscale_run_is_refused_in_one_line_whatever_its_blocks(tmp_path, capsys):
    run = tmp_path / "sr"
    assert main(["train", *TRAIN, "--steps", "1", "--task", "upscale", "--factor", "2", "--block-style", "adm",
                 "--out", str(run)]) == 0
    assert "run upscales" in fails_cleanly(capsys, ["export", run, "--to", "diffusers", tmp_path / "out"])
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_what_undiffuse_wrote(adm_run, tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    model = tmp_path / "bert"  # a transformers model folder: a config.json and a model.safetensors
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    save_file({"w": torch.zeros(2)}, str(model / "model.safetensors"))
    export_run(adm_run, tmp_path / "out")
    err = fails_cleanly(capsys, ["import", tmp_path / "out", "--out", model, "--overwrite"])
    assert "not an undiffuse run folder" in err and (model / "model.safetensors").is_file()
    assert "holds the source" in fails_cleanly(capsys, ["import", tmp_path / "out", "--out", tmp_path / "out",
                                                        "--overwrite"])
    (tmp_path / "out" / ".git").mkdir()  # a Hub clone of an export
    err = fails_cleanly(capsys, ["export", adm_run, "--to", "diffusers", tmp_path / "out", "--overwrite"])
    assert "holds what an export does not write (.git)" in err and (tmp_path / "out" / ".git").is_dir()
    (tmp_path / "out" / ".git").rmdir()
    monkeypatch.chdir(tmp_path / "out")
    assert "current folder" in fails_cleanly(capsys, ["export", adm_run, "--to", "diffusers", ".", "--overwrite"])
    assert (tmp_path / "out" / "undiffuse.json").is_file()


def test_a_replace_moves_folders_whole_and_cleans_what_a_killed_one_left(adm_run, tmp_path):
    from undiffuse.errors import CheckpointError
    from undiffuse.interop.staging import _move_onto_nothing, _replace

    dead = tmp_path / ".out.tmp-999999999-abc"  # a killed export's staging folder: no such process
    dead.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}-def"  # one of a running export: kept
    live.mkdir()
    export_run(adm_run, tmp_path / "out")
    assert not dead.exists() and live.exists()
    export_run(adm_run, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [live.name]
    staged, other = tmp_path / "staged", tmp_path / "other"
    staged.mkdir()
    (staged / "a").write_text("new")
    other.mkdir()
    (other / "b").write_text("another command's")  # filled after this command's check: never replaced
    with pytest.raises(CheckpointError, match="another command"):
        _move_onto_nothing(staged, other)
    with pytest.raises(CheckpointError, match="another command"):  # two exports at once, no --overwrite
        _replace(staged, other, overwrite=False)
    assert (other / "b").read_text() == "another command's" and (staged / "a").is_file()


def test_a_scheduler_beyond_what_a_run_holds_and_weights_missing_a_tensor_are_refused(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _random_unet2d(tmp_path / "hub")
    scheduler = tmp_path / "hub" / "scheduler" / "scheduler_config.json"
    original = scheduler.read_text()
    scheduler.write_text(json.dumps({**json.loads(original), "num_train_timesteps": 100_001}))
    assert "num_train_timesteps" in fails_cleanly(capsys, ["import", tmp_path / "hub", "--out", tmp_path / "run"])
    scheduler.write_text(original)
    weights = tmp_path / "hub" / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    missing = sorted(tensors)[3]
    del tensors[missing]
    save_file(tensors, str(weights))
    err = fails_cleanly(capsys, ["import", tmp_path / "hub", "--out", tmp_path / "run"])
    assert "missing" in err and missing in err
    assert not (tmp_path / "run").exists()


def test_a_nesting_bomb_or_a_huge_integer_in_a_config_is_one_line(tmp_path, capsys):
    _random_unet2d(tmp_path / "hub")
    path = tmp_path / "hub" / "unet" / "config.json"
    path.write_text('{"block_out_channels": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "not valid JSON" in fails_cleanly(capsys, ["import", tmp_path / "hub", "--out", tmp_path / "run"])
    path.write_text('{"layers_per_block": ' + "9" * 5000 + "}")
    assert "not valid JSON" in fails_cleanly(capsys, ["import", tmp_path / "hub", "--out", tmp_path / "run"])


@pytest.mark.parametrize("shard", ["diffusion_pytorch_model-00001.bin", "../elsewhere.safetensors"])
def test_a_sharded_index_naming_a_pickle_or_a_file_elsewhere_is_refused(tmp_path, capsys, shard):
    _random_unet2d(tmp_path / "hub")
    unet = tmp_path / "hub" / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    (unet / shard.split("/")[-1]).write_bytes(b"never opened")
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": {"conv_in.weight": shard}}))
    err = fails_cleanly(capsys, ["import", tmp_path / "hub", "--out", tmp_path / "run"])
    assert "safetensors files in the model's own folder only" in err


def test_a_1024_pixel_model_is_checked_at_a_small_side(tmp_path):
    """The eps check needs every weight, not every pixel: 8 images of 1024 x 1024 would take GBs."""
    _random_unet2d(tmp_path / "hub", sample_size=1024)
    done = import_folder(tmp_path / "hub", tmp_path / "run")
    assert done.max_eps_difference < TOL and read_run(tmp_path / "run").image_size == 1024


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(adm_run, tmp_path):
    """Past ulimit -f (a full disk fails the same way, with ENOSPC): a real failed write inside diffusers'
    and safetensors' writers; the staging folder goes, no OUT is made."""
    from cli_helpers import refusal

    limit = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from undiffuse.cli import main
sys.exit(main(sys.argv[1:]))
"""
    import subprocess

    child = subprocess.run([sys.executable, "-c", limit, "export", str(adm_run), "--to", "diffusers",
                            str(tmp_path / "out")], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert "cannot write" in refusal(child.returncode, child.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
