"""The command line: happy paths of every command, and bad input -> one line on stderr, exit code 2."""
import json

import numpy as np
import pytest
from PIL import Image

from undiffuse.cli import main

from cli_helpers import TRAIN, fails_cleanly


def test_train_writes_a_complete_run(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["train"]["steps"] == 8 and config["class_names"] == [str(k) for k in range(10)]
    assert (trained / "loss.png").is_file() and (trained / "ema.safetensors").is_file()


def test_train_refuses_an_existing_run_then_resumes_it(trained, capsys):
    err = fails_cleanly(capsys, ["train", *TRAIN, "--out", str(trained)])
    assert "--resume" in err
    assert main(["train", "--out", str(trained), "--resume", "--quiet"]) == 0  # already done: a no-op
    assert "finished at step 8" in capsys.readouterr().out


def test_train_reads_a_toml_config_and_flags_win(tmp_path, capsys):
    toml = tmp_path / "cfg.toml"
    toml.write_text('data = "digits"\nimage-size = 16\nsteps = 3\nbatch_size = 8\nmodel = "tiny"\ngrids = 0\nseed = 5\n')
    assert main(["train", "--config", str(toml), "--steps", "2", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["steps"] == 2 and config["train"]["seed"] == 5
    toml.write_text("stepz = 3\n")
    assert "unknown key" in fails_cleanly(capsys, ["train", "--config", str(toml), "--out", str(tmp_path / "q")])


def test_sample_png_npy_and_gif(trained, tmp_path, capsys):
    assert main(["sample", str(trained), "--per-class", "2", "--steps", "8", "--out", str(tmp_path / "g.png"),
                 "--gif", str(tmp_path / "g.gif")]) == 0
    grid = Image.open(tmp_path / "g.png")
    assert grid.size[1] > grid.size[0]  # 10 rows (one per digit) of 2
    gif = Image.open(tmp_path / "g.gif")
    assert gif.n_frames >= 4
    assert main(["sample", str(trained), "--n", "3", "--label", "7", "--sampler", "ddpm",
                 "--out", str(tmp_path / "s.npy")]) == 0
    images = np.load(tmp_path / "s.npy")
    assert images.shape == (3, 1, 16, 16) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert np.load(tmp_path / "s.labels.npy").tolist() == [7, 7, 7]


def test_n_is_the_total_and_per_class_draws_a_row_per_class(trained, tmp_path):
    assert main(["sample", str(trained), "--n", "16", "--steps", "2", "--out", str(tmp_path / "n.npy")]) == 0
    labels = np.load(tmp_path / "n.labels.npy").tolist()
    assert np.load(tmp_path / "n.npy").shape[0] == 16 and labels == [i % 10 for i in range(16)]
    assert main(["sample", str(trained), "--per-class", "3", "--steps", "2", "--out", str(tmp_path / "k.npy")]) == 0
    assert np.load(tmp_path / "k.labels.npy").tolist() == [c for c in range(10) for _ in range(3)]
    assert main(["sample", str(trained), "--steps", "2", "--out", str(tmp_path / "d.npy")]) == 0
    assert np.load(tmp_path / "d.npy").shape[0] == 80  # the default grid: 8 of each class
    assert main(["sample", str(trained), "--n", "5", "--label", "3", "--steps", "2", "--out", str(tmp_path / "l.png")]) == 0
    assert Image.open(tmp_path / "l.png").size[1] < Image.open(tmp_path / "l.png").size[0]  # one row of 5


def test_per_class_is_refused_where_it_cannot_apply(trained, tmp_path, capsys):
    for extra in (["--label", "3"], ["--n", "4"]):
        fails_cleanly(capsys, ["sample", trained, "--per-class", "2", *extra, "--out", tmp_path / "x.png"])
    assert not (tmp_path / "x.png").exists()


def test_sample_is_reproducible_by_seed(trained, tmp_path):
    for name in ("a", "b"):
        main(["sample", str(trained), "--n", "1", "--sampler", "ddim", "--steps", "3", "--eta", "1", "--seed", "4",
              "--out", str(tmp_path / f"{name}.npy")])
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler-a", "heun", "dpmpp-2m", "dpmpp-3m", "unipc"])
def test_every_sampler_from_the_command_line_with_guidance_and_animation(sampler, trained, tmp_path):
    out, gif = tmp_path / "s.npy", tmp_path / "s.gif"
    assert main(["sample", str(trained), "--per-class", "1", "--sampler", sampler, "--steps", "4", "--guidance", "3",
                 "--spacing", "karras", "--out", str(out), "--gif", str(gif)]) == 0
    images = np.load(out)
    assert images.shape == (10, 1, 16, 16) and np.isfinite(images).all()
    assert Image.open(gif).n_frames >= 3  # one frame a step (identical frames may merge)


def test_sigmoid_zero_snr_v_prediction_trains_and_samples(tmp_path, capsys):
    run = tmp_path / "z"
    assert main(["train", *TRAIN, "--schedule", "sigmoid", "--zero-snr", "--prediction", "v",
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["schedule"] == {"name": "sigmoid", "T": 1000, "zero_snr": True}
    assert main(["sample", str(run), "--n", "1", "--sampler", "dpmpp-3m", "--steps", "5",
                 "--out", str(tmp_path / "z.npy")]) == 0
    assert np.isfinite(np.load(tmp_path / "z.npy")).all()
    err = fails_cleanly(capsys, ["train", *TRAIN, "--zero-snr", "--out", str(tmp_path / "eps")])
    assert "prediction v or x0" in err


def test_sampler_flags_that_do_not_fit_are_refused(trained, capsys):
    assert "eta" in fails_cleanly(capsys, ["sample", str(trained), "--sampler", "heun", "--eta", "0.5"])
    assert "spacing" in fails_cleanly(capsys, ["sample", str(trained), "--sampler", "ddpm", "--spacing", "karras"])
    assert "invalid choice" in fails_cleanly(capsys, ["sample", str(trained), "--sampler", "plms"])


def test_noise_strip_from_an_image_and_from_a_data_set(tmp_path):
    img = tmp_path / "face.png"
    Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)).save(img)
    assert main(["noise", str(img), "--t", "0,50,100,200,500,999", "--out", str(tmp_path / "strip.png")]) == 0
    strip = Image.open(tmp_path / "strip.png")
    assert strip.size[0] > 5 * strip.size[1] - 40  # six columns, one row (plus the header)
    assert main(["noise", "digits", "--n", "3", "--out", str(tmp_path / "d.png")]) == 0


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "/no/such/folder", "--out", "{tmp}/r"], "no such file"),
    (["train", "--data", "{tmp}/empty", "--out", "{tmp}/r"], "holds no images"),
    (["train", "--data", "{tmp}/broken.npy", "--out", "{tmp}/r"], "broken.npy"),
    (["train", "--data", "digits", "--batch-size", "0", "--out", "{tmp}/r"], "batch_size"),
    (["train", "--data", "digits", "--steps", "ten", "--out", "{tmp}/r"], "invalid int"),
    (["train", "--data", "digits", "--schedule", "square", "--out", "{tmp}/r"], "invalid choice"),
    (["train", "--data", "digits"], "--out"),
    (["sample", "{tmp}/nothing"], "does not exist"),
    (["sample", "{tmp}/empty"], "not an undiffuse run"),
    (["noise", "{tmp}/missing.png"], "missing.png"),
    (["noise", "{tmp}/broken.png"], "broken.png"),
    (["noise", "digits", "--t", "0,5000"], "outside"),
    (["demo", "--minutes", "-1"], "minutes"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    err = fails_cleanly(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert needle in err
    assert not (tmp_path / "r").exists()


def test_sample_rejects_labels_the_model_does_not_have(trained, capsys):
    assert "out of range" in fails_cleanly(capsys, ["sample", str(trained), "--label", "12"])
    assert "choose one of" in fails_cleanly(capsys, ["sample", str(trained), "--label", "ship"])
    assert "--out" in fails_cleanly(capsys, ["sample", str(trained), "--out", "x.jpg"])
    assert "steps" in fails_cleanly(capsys, ["sample", str(trained), "--steps", "0"])


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "train", "sample", "noise"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--batch-size" in out and "images per optimizer step" in out


def test_sample_with_a_context_mixture(trained, tmp_path, capsys):
    assert main(["sample", str(trained), "--context", "0.5*3+0.5*8", "--n", "2", "--steps", "3",
                 "--out", str(tmp_path / "mix.npy")]) == 0
    assert np.load(tmp_path / "mix.npy").shape == (2, 1, 16, 16)
    assert "choose one of" in fails_cleanly(capsys, ["sample", str(trained), "--context", "ship"])
    assert "not both" in fails_cleanly(capsys, ["sample", str(trained), "--context", "3", "--label", "3"])


def test_sprites_with_multi_hot_contexts_train_and_sample_by_attribute(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "sprites_1788_16x16.npy", rng.integers(0, 256, (24, 16, 16, 3)).astype(np.uint8))
    contexts = np.zeros((24, 5), np.float64)
    contexts[np.arange(24), np.arange(24) % 5] = 1
    np.save(tmp_path / "sprite_labels_nc_1788_16x16.npy", contexts)
    run = tmp_path / "sprites"
    assert main(["train", "--data", str(tmp_path / "sprites_1788_16x16.npy"),
                 "--labels", str(tmp_path / "sprite_labels_nc_1788_16x16.npy"),
                 "--context-names", "hero,non-hero,food,spell,side-facing",
                 "--steps", "3", "--batch-size", "8", "--model", "tiny", "--grids", "0", "--quiet",
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == ["hero", "non-hero", "food", "spell", "side-facing"]
    assert main(["sample", str(run), "--context", "0.6*hero+0.4*food", "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "mix.png")]) == 0
    assert Image.open(tmp_path / "mix.png").mode == "RGB"
    assert "choose one of hero, non-hero" in fails_cleanly(capsys, ["sample", str(run), "--context", "villain"])
    err = fails_cleanly(capsys, ["train", "--data", str(tmp_path / "sprites_1788_16x16.npy"), "--labels",
                                  str(tmp_path / "sprite_labels_nc_1788_16x16.npy"), "--context-names", "a,b",
                                  "--out", str(tmp_path / "bad")])
    assert "2 context names for 5" in err


def test_finetune_on_one_class_records_its_base(trained, tmp_path, capsys):
    out = tmp_path / "threes"
    assert main(["finetune", str(trained), "--data", "digits", "--label", "3", "--steps", "4",
                 "--batch-size", "8", "--grids", "0", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["finetuned_from"]["run"] == str(trained.resolve())
    assert config["train"]["only_label"] == "3" and config["num_images"] == 183  # the 3s of the 8x8 digits
    assert config["unet"] == json.loads((trained / "config.json").read_text())["unet"]
    assert main(["sample", str(out), "--guidance", "0", "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "u.npy")]) == 0
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert "choose one of" in fails_cleanly(capsys, ["finetune", str(trained), "--data", "digits", "--label",
                                                     "ship", "--out", str(tmp_path / "x")])
    assert "does not exist" in fails_cleanly(capsys, ["finetune", str(tmp_path / "nope"), "--data", "digits",
                                                      "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
