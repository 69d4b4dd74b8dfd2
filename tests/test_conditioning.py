import pytest
import torch

from undiffuse.conditions import class_id, parse_context
from undiffuse.denoiser import denoiser, guided
from undiffuse.schedule import linear

NAMES = ("hero", "non-hero", "food", "spell", "side-facing")


def test_guidance_zero_and_one_are_the_unconditional_and_conditional_predictions():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(guided(a, b, 0.0), a)
    assert torch.equal(guided(a, b, 1.0), b)
    assert torch.allclose(guided(a, b, 3.0), a + 3 * (b - a))


def test_denoiser_guidance_runs_both_branches_through_the_network():
    calls = []

    def net(x, t, context=None, null=None):
        calls.append(None if context is None else (context.shape[0], None if null is None else null.tolist()))
        base = torch.zeros_like(x)
        if context is None:
            return base
        on = context.sum(1).view(-1, 1, 1, 1) * torch.ones_like(x)
        return on if null is None else torch.where(null.view(-1, 1, 1, 1), base, on)

    x, t, ctx = torch.randn(2, 1, 2, 2), torch.tensor([5, 5]), torch.eye(3)[:2] * 2
    s = linear(10)
    assert torch.equal(denoiser(net, s, context=ctx, guidance=1.0)(x, t), 2 * torch.ones_like(x))
    assert torch.equal(denoiser(net, s, context=ctx, guidance=0.0)(x, t), torch.zeros_like(x))
    assert torch.allclose(denoiser(net, s, context=ctx, guidance=3.0)(x, t), 6 * torch.ones_like(x))
    assert calls[-1] == (4, [False, False, True, True])  # one batched pass for both branches


def test_parse_context_names_mixtures_and_vectors():
    assert parse_context("hero", NAMES).tolist() == [1, 0, 0, 0, 0]
    assert torch.allclose(parse_context("0.6*hero+0.4*food", NAMES), torch.tensor([0.6, 0, 0.4, 0, 0]))
    assert parse_context("1,0,0,0,1", NAMES).tolist() == [1, 0, 0, 0, 1]
    assert parse_context("non-hero+side-facing", NAMES).tolist() == [0, 1, 0, 0, 1]
    assert parse_context("0.5*3+0.5*8", [str(k) for k in range(10)])[[3, 8]].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("spec,needle", [
    ("villain", "choose one of hero, non-hero"),
    ("1,0", "has 2 values"),
    ("x*hero", "not a number"),
    ("9", "out of range"),
])
def test_parse_context_errors_name_the_valid_choices(spec, needle):
    with pytest.raises(ValueError, match=needle):
        parse_context(spec, NAMES)


def test_class_id_by_name_or_index():
    assert class_id("food", NAMES) == 2 and class_id("4", NAMES) == 4
    with pytest.raises(ValueError, match="unconditional"):
        class_id("1", ())
