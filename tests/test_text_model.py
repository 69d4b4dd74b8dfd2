"""Text-conditioned models: the U-Net's cross-attention and pooled embedding with their learned nulls,
guidance and negative prompts in the denoiser, prompts through generate, training on captions, the
caption table a run keeps, and the command line's refusals."""
import importlib.util

import pytest
import torch

from undiffuse.conditions.prompt import NULL_TOKENS, cat_text, nulled
from undiffuse.conditions.text import MODEL_PACKAGE, TextBatch
from undiffuse.denoiser import denoiser
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


def test_the_empty_prompt_is_the_unconditional_branch_bitwise():
    net, x, t = _net(), torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 95])
    with torch.no_grad():
        unconditional = net(x, t)
        assert torch.equal(net(x, t, text=nulled(_text(3))), unconditional)
        assert torch.equal(net(x, t, text=nulled(_text(3, length=11, seed=4))), unconditional)
        mixed = net(x, t, text=_text(3, null=[False, True, False]))
    assert torch.allclose(mixed[1], unconditional[1], atol=1e-6)  # a null row among prompts: the null too
    assert not torch.allclose(mixed[0], unconditional[0], atol=1e-3)


def test_the_prompt_reaches_the_output_through_the_tokens_and_the_pooled_embedding():
    net, x, t = _net(), torch.randn(1, 1, 8, 8).repeat(2, 1, 1, 1), torch.tensor([50, 50])
    a = _text(2)
    same_pooled = a._replace(tokens=a.tokens[[1, 0]], mask=a.mask[[1, 0]], pooled=a.pooled[[0, 0]])
    with torch.no_grad():
        out = net(x, t, text=a._replace(pooled=a.pooled[[0, 0]]))
        swapped = net(x, t, text=same_pooled)
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # the tokens alone tell the rows apart
    assert torch.allclose(swapped[0], out[1], atol=1e-5)  # padding masked: only the real tokens count
    # the pooled embedding alone, too
    with torch.no_grad():
        pooled_only = net(x, t, text=a._replace(tokens=a.tokens[[0, 0]], mask=a.mask[[0, 0]]))
    assert not torch.allclose(pooled_only[0], pooled_only[1], atol=1e-4)


def test_padding_tokens_beyond_the_mask_do_not_matter():
    net, x, t = _net(), torch.randn(2, 1, 8, 8), torch.tensor([10, 90])
    a = _text(2, length=4)
    longer = a._replace(tokens=torch.cat([a.tokens, 7 * torch.ones(2, 3, DIM)], 1), mask=torch.cat(
        [a.mask, torch.zeros(2, 3, dtype=torch.bool)], 1))
    with torch.no_grad():
        assert torch.allclose(net(x, t, text=a), net(x, t, text=longer), atol=1e-6)


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
    assert net(x, t, text=text).shape == x.shape
    net = _net().train()
    loss = net(x, t, text=text).square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.grad_checkpointing = True
    net(x, t, text=text).square().mean().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, net.parameters()))
    assert net.prompt.null_pooled.grad is not None


def test_guidance_and_negative_prompts_change_the_prediction():
    net, x, t = _net(), torch.randn(2, 1, 8, 8), torch.tensor(60)
    pos, neg = _text(2), _text(2, seed=9)
    with torch.no_grad():
        cond = denoiser(net, SCHEDULE, text=pos, guidance=1.0)(x, t)[0]
        uncond = net(x, t.expand(2))
        w3 = denoiser(net, SCHEDULE, text=pos, guidance=3.0)(x, t)[0]
        with_neg = denoiser(net, SCHEDULE, text=pos, negative=neg, guidance=3.0)(x, t)[0]
        eps_neg = denoiser(net, SCHEDULE, text=neg, guidance=1.0)(x, t)[0]
        assert torch.equal(denoiser(net, SCHEDULE, text=pos, guidance=0.0)(x, t)[0], uncond)
        assert torch.equal(denoiser(net, SCHEDULE, text=nulled(pos), guidance=3.0)(x, t)[0], uncond)
    assert torch.allclose(w3, uncond + 3 * (cond - uncond), atol=1e-5)
    assert torch.allclose(with_neg, eps_neg + 3 * (cond - eps_neg), atol=1e-5)
    assert not torch.allclose(with_neg, w3, atol=1e-4)


def test_cat_text_pads_the_shorter_batch():
    a, b = _text(2, length=3), _text(1, length=6, null=[True])
    both = cat_text(a, b)
    assert both.tokens.shape == (3, 6, DIM) and both.mask.shape == (3, 6)
    assert not both.mask[:2, 3:].any() and both.null.tolist() == [False, False, True]
