"""Super-resolution (SR3): the U-Net's low-res input channels, training with --task upscale on the 8x8
digits at 16x16 (factor 2, a tiny model for 60 steps: seconds), edit.upscale and `undiffuse upscale`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.cli import main
from undiffuse.conditions import Condition
from undiffuse.conditions.lowres import LowRes, downsample, upsample
from undiffuse.data import load_data
from undiffuse.edit import upscale
from undiffuse.errors import UsageError
from undiffuse.generation import generate, load_run
from undiffuse.run import read_run
from undiffuse.unet import UNet, UNetConfig

from cli_helpers import TRAIN, fails_cleanly


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", image_size=16).images


def _main(argv):
    return main([str(a) for a in argv])


def _save_png(tensor, path):
    Image.fromarray(((tensor[0].numpy() + 1) * 127.5).round().astype("uint8")).save(path)
    return path


def test_the_unet_takes_the_low_res_image_as_extra_channels_and_its_level():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=1, base=16, mults=(1, 2), attention=(), cond_channels=1))
    with torch.no_grad():  # zero-initialised layers (the output, each block's last conv) made live
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.1)
    assert net.conv_in.in_channels == 2 and net.conv_out.out_channels == 1
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    a = net(x, t, Condition(low=LowRes(torch.randn(2, 1, 16, 16), torch.zeros(2))))
    b = net(x, t, Condition(low=LowRes(torch.randn(2, 1, 16, 16), torch.zeros(2))))
    assert a.shape == (2, 1, 16, 16) and not torch.allclose(a, b)
    c = net(x, t, Condition(low=LowRes(b.new_zeros(2, 1, 16, 16), torch.zeros(2))))
    d = net(x, t, Condition(low=LowRes(b.new_zeros(2, 1, 16, 16), torch.full((2,), 0.3))))
    assert not torch.allclose(c, d)  # the network is told the augmentation level
    with pytest.raises(UsageError, match="needs a low-resolution image"):
        net(x, t)
    with pytest.raises(UsageError, match="takes no low-resolution image"):
        UNet(UNetConfig(base=16, mults=(1, 2), attention=()))(x, t, Condition(low=LowRes(x, torch.zeros(2))))


def test_the_run_records_its_task_factor_and_augmentation(sr_run):
    config = json.loads((sr_run / "config.json").read_text())
    assert config["train"]["task"] == "upscale" and config["train"]["factor"] == 2
    assert config["train"]["cond_aug"] == 0.5 and config["unet"]["cond_channels"] == 1
    record = read_run(sr_run)
    assert record.task == "upscale" and record.factor == 2
    loaded = load_run(sr_run)
    assert loaded.task == "upscale" and loaded.factor == 2 and loaded.num_classes == 0
    assert list((sr_run / "samples").glob("*.png"))  # the training grid upscales training images


def test_the_conditioning_image_changes_the_output(sr_run, digits):
    loaded = load_run(sr_run)
    a = upscale(loaded, downsample(digits[:2], 2), sampler="ddim", steps=5, seed=0)
    b = upscale(loaded, downsample(digits[2:4], 2), sampler="ddim", steps=5, seed=0)
    assert a.shape == (2, 1, 16, 16) and (a - b).abs().max() > 0.1


def test_a_sample_downsamples_back_to_its_input(sr_run, digits):
    loaded = load_run(sr_run)
    low, other = downsample(digits[:8], 2), downsample(digits[8:16], 2)
    back = downsample(upscale(loaded, low, sampler="ddim", steps=10, seed=1), 2)
    assert ((back - low) ** 2).mean() < 0.4 * ((back - other) ** 2).mean()


def test_one_image_and_n_results_each(sr_run, digits):
    loaded = load_run(sr_run)
    out = upscale(loaded, downsample(digits[:1], 2)[0], n=3, sampler="ddim", steps=3, seed=0)
    assert out.shape == (3, 1, 16, 16) and out.abs().max() <= 1
    same = upscale(loaded, downsample(digits[:1], 2)[0], n=3, sampler="ddim", steps=3, seed=0)
    assert torch.equal(out, same)
    with pytest.raises(UsageError, match="is 16x16; this model upscales 8x8 images to 16x16"):
        upscale(loaded, digits[:1])
    with pytest.raises(UsageError, match="needs a low-resolution image"):
        generate(loaded, 2)


def test_the_command_writes_low_res_bicubic_and_results(sr_run, digits, tmp_path, capsys):
    small = _save_png(downsample(digits[:1], 2)[0], tmp_path / "small.png")
    out = tmp_path / "big.png"
    assert _main(["upscale", sr_run, "--image", small, "--out", out, "--n", "2", "--steps", "3",
                 "--gif", tmp_path / "a.gif"]) == 0
    assert Image.open(out).size[0] > 4 * 16 and (tmp_path / "a.gif").is_file()
    assert _main(["upscale", sr_run, "--image", small, "--out", tmp_path / "big.npy", "--n", "2", "--steps", "3"]) == 0
    assert np.load(tmp_path / "big.npy").shape == (2, 1, 16, 16)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(rgb)  # converted to the run's channels
    assert _main(["upscale", sr_run, "--image", rgb, "--out", out, "--n", "1", "--steps", "2"]) == 0


def test_bad_input_is_one_line_exit_2(sr_run, trained, digits, tmp_path, capsys):
    wrong = _save_png(digits[0], tmp_path / "wrong.png")
    err = fails_cleanly(capsys, ["upscale", sr_run, "--image", wrong, "--out", tmp_path / "o.png"])
    assert "16x16" in err and "8x8" in err
    small = _save_png(downsample(digits[:1], 2)[0], tmp_path / "small.png")
    assert "does not upscale" in fails_cleanly(capsys, ["upscale", trained, "--image", small, "--out", tmp_path / "o.png"])
    assert "needs a low-resolution image" in fails_cleanly(capsys, ["sample", sr_run, "--out", tmp_path / "s.png"])
    train = [*TRAIN, "--task", "upscale", "--out", tmp_path / "r"]
    assert "does not divide the image size 16" in fails_cleanly(capsys, ["train", *train, "--factor", "3"])
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(10, dtype=np.int64))
    assert "takes no labels" in fails_cleanly(capsys, ["train", *train, "--labels", labels])
    assert "takes no captions" in fails_cleanly(capsys, ["train", *train, "--captions", "templates"])
    assert "factor applies to task upscale" in fails_cleanly(capsys, ["train", *TRAIN, "--factor", "2",
                                                                      "--out", tmp_path / "r"])
    assert not (tmp_path / "r").exists()


def test_an_upscale_run_fine_tunes_as_an_upscale_run(sr_run, digits, tmp_path):
    tuned = tmp_path / "tuned"
    assert _main(["finetune", sr_run, "--data", "digits", "--label", "7", "--steps", "3", "--grids", "0",
                  "--quiet", "--out", tuned]) == 0
    record = read_run(tuned)
    assert (record.task, record.factor, record.num_images) == ("upscale", 2, 179)  # the 179 sevens
    assert record.unet == read_run(sr_run).unet and record.finetuned_from is not None
    out = upscale(load_run(tuned), downsample(digits[:2], 2), sampler="ddim", steps=3, seed=0)
    assert out.shape == (2, 1, 16, 16)


def test_runs_written_before_the_task_still_load_and_generate(trained, tmp_path):
    import shutil

    run = shutil.copytree(trained, tmp_path / "old")
    config = json.loads((run / "config.json").read_text())
    config["unet"].pop("cond_channels")
    for key in ("task", "factor", "cond_aug"):
        config["train"].pop(key)
    (run / "config.json").write_text(json.dumps(config))
    loaded = load_run(run)
    assert loaded.task == "generate" and loaded.factor is None and read_run(run).task == "generate"
    assert generate(loaded, 2, labels=[0, 1], steps=2).shape == (2, 1, 16, 16)


def test_bicubic_round_trip_shapes():
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    assert downsample(x, 4).shape == (2, 3, 7, 7) and upsample(downsample(x, 4), 4).shape == x.shape
