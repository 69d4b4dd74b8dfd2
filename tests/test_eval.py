"""`undiffuse eval`: scores written as JSON next to the run, never over an earlier one; --samples files;
bad input -> one line on stderr and exit code 2."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from undiffuse.cli import main
from undiffuse.data import load_data
from undiffuse.eval.evaluate import balanced_labels, generate_in_batches
from undiffuse.generation import DEFAULT_SAMPLER, generate, load_run

from cli_helpers import fails_cleanly

KEYS = {"fid", "kid", "kid_std", "precision", "recall", "n_real", "n_fake", "features", "run", "against"}


def _unit_npy(images, path):
    np.save(path, ((images + 1) / 2).numpy().astype(np.float32))
    return path


def test_eval_samples_scores_and_never_replaces_an_earlier_eval(trained, capsys):
    argv = ["eval", str(trained), "--n", "20", "--steps", "2", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "precision" in out and "eval.json" in out
    result = json.loads((trained / "eval.json").read_text())
    assert KEYS <= set(result) and result["n_fake"] == 20 and result["n_real"] == 1797
    assert result["features"] == "digits" and result["against"] == "digits"
    assert result["sampler"] == DEFAULT_SAMPLER
    assert result["memorisation"]["pixels"]["near_copies"] < 0.5  # an 8-step model draws blobs, not copies
    assert main(argv) == 0
    assert json.loads((trained / "eval-2.json").read_text())["fid"] == pytest.approx(result["fid"])


def test_eval_reports_memorisation_against_the_training_images(trained, tmp_path, capsys):
    train = load_data("digits", image_size=16).images
    copies = _unit_npy(train[:50], tmp_path / "copies.npy")  # a "model" that returns its training images
    assert main(["eval", str(trained), "--samples", str(copies), "--out", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    scores = json.loads((tmp_path / "c.json").read_text())["memorisation"]
    assert scores["pixels"]["near_copies"] == 1.0 and scores["features"]["near_copies"] == 1.0
    assert "near copies" in out and (tmp_path / "c-closest.png").is_file()


def test_eval_of_real_images_beats_noise(trained, tmp_path, capsys):
    real = load_data("digits", image_size=16).images
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    against = _unit_npy(real[order[:300]], tmp_path / "against.npy")  # fewer real images: a faster test
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = {}
    for name, images in (("real", real[order[300:600]]), ("noise", noise)):
        path = _unit_npy(images, tmp_path / f"{name}.npy")
        assert main(["eval", str(trained), "--samples", str(path), "--against", str(against), "--features", "digits",
                     "--out", str(tmp_path / f"{name}.json")]) == 0
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())
    print(scores)
    assert scores["real"]["fid"] < 0.05 * scores["noise"]["fid"]
    assert scores["real"]["precision"] > 0.8 and scores["noise"]["precision"] < 0.1
    assert scores["real"]["samples"].endswith("real.npy")


def test_batches_do_not_change_the_samples_and_classes_are_balanced(trained):
    run = load_run(trained)
    labels = balanced_labels(run, 12)
    assert labels == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    batched = generate_in_batches(run, 12, batch_size=5, seed=3, steps=2)
    assert torch.allclose(batched, generate(run, 12, labels=labels, seed=3, steps=2), atol=1e-5)


@pytest.mark.parametrize("compile,first_batch,can,compiled_batches", [
    ("auto", 300.0, True, [5]),  # the one full batch left would take 300 s: compile it (not the partial last)
    ("auto", 200.0, True, []),  # 200 s left: the compile time would not be repaid
    ("auto", 300.0, False, []),  # no compiler on this machine
    ("no", 1e6, True, []),
    ("yes", 0.0, True, [5, 5]),  # from the start, the partial last batch still eager
])
def test_eval_compiles_the_network_when_the_batches_left_repay_it(trained, monkeypatch, compile, first_batch, can,
                                                                  compiled_batches):
    from undiffuse.eval import evaluate

    run = load_run(trained)
    compiled = []

    class Compiled:  # stands in for torch.compile's module: counts the batches it samples
        def __init__(self, net):
            self.net, self.cfg = net, net.cfg

        def __call__(self, x, *args, **kwargs):
            compiled.append(len(x))
            return self.net(x, *args, **kwargs)

        def parameters(self):
            return self.net.parameters()

    monkeypatch.setattr(evaluate, "can_compile", lambda run: can)
    monkeypatch.setattr(evaluate, "with_compiled_network", lambda run: dataclasses.replace(run, net=Compiled(run.net)))
    times = iter([0.0, first_batch] + [first_batch] * 10)
    images = generate_in_batches(run, 12, batch_size=5, seed=3, steps=2, guidance=1.0, compile=compile,
                                 clock=lambda: next(times))
    assert compiled[::2] == compiled_batches  # each batch makes two calls at 2 steps
    assert torch.allclose(images, generate(run, 12, labels=balanced_labels(run, 12), seed=3, steps=2, guidance=1.0),
                          atol=1e-5)


@pytest.mark.parametrize("extra,needle", [
    (["--n", "5"], "--n must lie"),
    (["--batch-size", "0"], "--batch-size"),
    (["--samples", "{tmp}/small.npy", "--steps", "3"], "drop --steps"),
    (["--samples", "{tmp}/wrong.npy"], "expected float images"),
    (["--samples", "{tmp}/missing.npy"], "not an existing .npy"),
    (["--samples", "{tmp}/small.npy", "--out", "{tmp}/taken.json"], "--overwrite"),
    (["--samples", "{tmp}/small.npy", "--out", "{tmp}/x.txt"], ".json"),
    (["--samples", "{tmp}/small.npy", "--against", "{tmp}/nowhere"], "no such file"),
    (["--samples", "{tmp}/small.npy", "--features", "inception"], "pt_inception-2015-12-05"),
])
def test_eval_bad_input_gets_one_line_and_exit_code_2(trained, tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no Inception weights here
    np.save(tmp_path / "small.npy", np.full((12, 1, 16, 16), 0.5, np.float32))
    np.save(tmp_path / "wrong.npy", np.zeros((12, 3, 16, 16), np.float32))
    (tmp_path / "taken.json").write_text("{}")
    err = fails_cleanly(capsys, ["eval", str(trained), *[a.replace("{tmp}", str(tmp_path)) for a in extra]])
    assert needle in err
    assert (tmp_path / "taken.json").read_text() == "{}"


def test_eval_of_a_missing_run_fails_cleanly(tmp_path, capsys):
    assert "does not exist" in fails_cleanly(capsys, ["eval", str(tmp_path / "nothing")])


def test_eval_help_names_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for flag in ("--samples", "--against", "--features", "--inception-weights", "--n", "--guidance"):
        assert flag in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "eval" in capsys.readouterr().out
