"""Every command works on every kind of run it accepts, and refuses in one line where a kind makes no
sense: sample, img2img, inpaint, outpaint, interpolate, eval and the web page's jobs, on an
unconditional, a class, an attribute, a text and an upscale run (each trained a few steps here)."""
import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.cli import main

from cli_helpers import TRAIN, fails_cleanly

KINDS = ("unconditional", "class", "attribute", "text", "upscale")
ATTRIBUTES = "even,big,round"  # of the digits 0-9: even, at least 5, 0/6/8/9


def _train(folder, *flags) -> str:
    assert main(["train", *TRAIN, "--steps", "2", *map(str, flags), "--out", str(folder)]) == 0
    return str(folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained, sr_run, encoder):
    from undiffuse.data import load_data

    folder = tmp_path_factory.mktemp("kinds")
    digits = load_data("digits").labels.numpy()
    attributes = np.stack([digits % 2 == 0, digits >= 5, np.isin(digits, [0, 6, 8, 9])], 1).astype(np.float32)
    np.save(folder / "attributes.npy", attributes)
    return {"unconditional": _train(folder / "u", "--no-conditional"),
            "class": str(trained),
            "attribute": _train(folder / "a", "--labels", folder / "attributes.npy", "--context-names", ATTRIBUTES),
            "text": _train(folder / "t", "--captions", "templates"),
            "upscale": str(sr_run)}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(folder / "image.png")
    Image.fromarray(np.pad(np.full((8, 16), 255, np.uint8), ((0, 8), (0, 0)))).save(folder / "mask.png")
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(folder / "small.png")
    return folder


ASKS = {"unconditional": [], "class": ["--label", "3", "--guidance", "2"],
        "attribute": ["--context", "0.5*even+0.5*round"], "text": ["--prompt", "a handwritten seven"],
        "upscale": []}


def commands(run: str, kind: str, pics, out) -> dict[str, list]:
    ask = ASKS[kind]
    return {
        "sample": ["sample", run, "--n", "2", "--steps", "2", *ask, "--out", out / "s.npy"],
        "img2img": ["img2img", run, "--image", pics / "image.png", "--strength", "0.5", "--n", "2", "--steps", "2",
                    *ask, "--out", out / "i.npy"],
        "inpaint": ["inpaint", run, "--image", pics / "image.png", "--mask", pics / "mask.png", "--method", "replace",
                    "--steps", "2", "--n", "2", *ask, "--out", out / "p.npy"],
        "outpaint": ["outpaint", run, "--image", pics / "image.png", "--pad", "2,0,2,0", "--method", "replace",
                     "--steps", "2", "--n", "2", *ask, "--out", out / "o.npy"],
        "interpolate": ["interpolate", run, "--seeds", "1,2", "--n", "3", "--steps", "2", *ask, "--out", out / "l.npy"],
        "eval": ["eval", run, "--n", "10", "--steps", "2", "--features", "digits", "--out", out / "e.json"],
        "upscale": ["upscale", run, "--image", pics / "small.png", "--n", "2", "--steps", "2", "--out", out / "u.png"],
    }


GENERATING = ("sample", "img2img", "inpaint", "outpaint", "interpolate", "eval")


@pytest.mark.parametrize("kind", KINDS)
def test_each_command_works_or_refuses_in_one_line(kind, runs, pictures, tmp_path, capsys):
    for name, argv in commands(runs[kind], kind, pictures, tmp_path).items():
        makes_sense = (name == "upscale") == (kind == "upscale")
        if makes_sense:
            code = main([str(a) for a in argv])
            assert code == 0, (kind, name, capsys.readouterr().err)
            continue
        err = fails_cleanly(capsys, argv)
        assert ("upscales" in err) if kind == "upscale" else ("does not upscale" in err or "generates" in err), err
    if kind != "upscale":
        assert np.load(tmp_path / "s.npy").shape[0] == 2 and np.load(tmp_path / "l.npy").shape[0] == 3


@pytest.mark.parametrize("kind", KINDS)
def test_each_page_job_runs_or_is_refused(kind, runs):
    import base64
    import io

    from undiffuse.generation import load_run
    from undiffuse.serve.jobs import run_job
    from undiffuse.serve.requests import RequestError, parse_generate, parse_img2img, parse_inpaint, parse_upscale

    def url(array: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    run = load_run(runs[kind])
    image, mask = url(np.full((16, 16), 90, np.uint8)), url(np.pad(np.full((8, 16), 255, np.uint8), ((0, 8), (0, 0))))
    ask = {"class": {"label": "3"}, "attribute": {"context": "0.5*even+0.5*big"},
           "text": {"prompt": "a seven", "negative_prompt": "a one"}}.get(kind, {})
    requests = {parse_generate: {"n": 2, "steps": 2, **ask},
                parse_img2img: {"image": image, "strength": 0.5, "n": 2, "steps": 2, **ask},
                parse_inpaint: {"image": image, "mask": mask, "method": "replace", "steps": 2, "n": 2, **ask},
                parse_upscale: {"image": url(np.full((8, 8), 200, np.uint8)), "n": 2, "steps": 2}}
    for parse, body in requests.items():
        if (parse is parse_upscale) != (kind == "upscale"):
            with pytest.raises(RequestError):
                parse(run, body)
            continue
        job = parse(run, body)
        with torch.inference_mode():
            images = run_job(run, job, lambda state: None)
        assert len(images) >= 2 and torch.isfinite(images).all(), (kind, parse.__name__)


@pytest.mark.parametrize("kind", ["class", "attribute", "text", "unconditional"])
def test_python_and_the_command_line_draw_the_same_images_by_default(kind, runs, tmp_path):
    """No flags, no arguments: one default for what to draw and how hard to guide, wherever it is asked."""
    from undiffuse.generation import generate, load_run

    assert main(["sample", runs[kind], "--n", "6", "--out", str(tmp_path / "s.npy")]) == 0
    from_python = (generate(load_run(runs[kind]), 6) + 1) / 2
    assert torch.allclose(torch.from_numpy(np.load(tmp_path / "s.npy")), from_python, atol=1e-6)
