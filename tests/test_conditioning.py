import pytest
import torch

from undiffuse.conditions import Classes, Condition, class_id, parse_context
from undiffuse.guidance import denoiser, from_eps, guided
from undiffuse.schedule import linear

NAMES = ("hero", "non-hero", "food", "spell", "side-facing")


def test_guidance_zero_and_one_are_the_unconditional_and_conditional_predictions():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(guided(a, b, 0.0), a)
    assert torch.equal(guided(a, b, 1.0), b)
    assert torch.allclose(guided(a, b, 3.0), a + 3 * (b - a))


def test_denoiser_guidance_runs_both_branches_through_the_network():
    calls = []

    def net(x, t, cond=None):
        classes = cond.classes
        calls.append((classes.vectors.shape[0], classes.null.tolist()))
        on = classes.vectors.sum(1).view(-1, 1, 1, 1) * torch.ones_like(x)
        return torch.where(classes.null.view(-1, 1, 1, 1), torch.zeros_like(x), on)

    x, t, ctx = torch.randn(2, 1, 2, 2), torch.tensor([5, 5]), torch.eye(3)[:2] * 2
    s, cond = linear(10), Condition(Classes.of(ctx))
    assert torch.equal(denoiser(net, s, cond=cond, guidance=1.0)(x, t)[0], 2 * torch.ones_like(x))
    assert calls[-1] == (2, [False, False])
    assert torch.equal(denoiser(net, s, cond=cond, guidance=0.0)(x, t)[0], torch.zeros_like(x))
    assert calls[-1] == (2, [True, True])  # guidance 0: one pass on the null class
    eps, x0 = denoiser(net, s, cond=cond, guidance=3.0)(x, t)
    assert torch.allclose(eps, 6 * torch.ones_like(x))
    assert torch.allclose(x0, s.x0_from_eps(x, t, eps), atol=1e-5)  # the guided x0 belongs to the guided eps
    assert calls[-1] == (4, [False, False, True, True])  # one batched pass for both branches


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_returns_eps_and_x0_passing_the_predicted_one_through(prediction):
    """What the network predicts reaches the sampler untouched; the other one is converted once."""
    s = linear(10)
    x, t = torch.randn(3, 1, 2, 2), torch.tensor([1, 1, 1])  # alpha_bar 0.76: well conditioned in float32
    out = torch.randn(3, 1, 2, 2)
    eps, x0 = denoiser(lambda x_t, t_, cond=None: out, s, prediction=prediction)(x, t)
    if prediction == "eps":
        assert eps is out and torch.allclose(x0, s.x0_from_eps(x, t, out))
    elif prediction == "x0":
        assert x0 is out and torch.allclose(eps, s.eps_from_x0(x, t, out))
    else:
        assert torch.allclose(s.v_target(x0, t, eps), out, atol=1e-5)
    assert torch.allclose(x, s.q_sample(x0, t, eps), atol=1e-5)  # a consistent pair: x_t = a x0 + s eps


def test_a_condition_that_steers_nothing_runs_one_pass_whatever_the_guidance():
    calls = []

    def net(x, t, cond=None):
        calls.append(len(x))
        return torch.zeros_like(x)

    x, t, s = torch.randn(2, 1, 2, 2), torch.tensor([5, 5]), linear(10)
    nothing = Condition(Classes(torch.eye(3)[:2], torch.tensor([True, True])))
    for cond in (None, nothing):
        denoiser(net, s, cond=cond, guidance=3.0)(x, t)
    assert calls == [2, 2]


def test_from_eps_adapts_a_bare_noise_prediction():
    s = linear(10)
    x, t = torch.randn(2, 1, 2, 2), torch.tensor([3, 3])
    eps, x0 = from_eps(lambda x_t, t_: 0.5 * x_t, s)(x, t)
    assert torch.equal(eps, 0.5 * x) and torch.allclose(x0, s.x0_from_eps(x, t, eps))


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


EMOJI = ("Activities", "Animals & Nature", "Flags", "Food & Drink", "Smileys & Emotion", "Travel & Places")


@pytest.mark.parametrize("label,name", [
    ("food", "Food & Drink"), ("Food&Drink", "Food & Drink"), ("food-and-drink", "Food & Drink"),
    ("FLAGS", "Flags"), ("smileys", "Smileys & Emotion"), ("travel & places", "Travel & Places"),
    ("animals and nature", "Animals & Nature"),
])
def test_class_id_takes_a_name_as_people_type_it(label, name):
    assert class_id(label, EMOJI) == EMOJI.index(name)


def test_loose_names_in_a_mixture_and_what_stays_refused():
    assert parse_context("0.5*food+0.5*Smileys & Emotion", EMOJI)[[3, 4]].tolist() == [0.5, 0.5]
    assert class_id("non", NAMES) == 1 and class_id("side", NAMES) == 4  # whole first words
    with pytest.raises(ValueError, match="unknown label 'foo'"):
        class_id("foo", EMOJI)  # a part of a word is not a name
    with pytest.raises(ValueError, match="could be any of Red Apple, Red Car"):
        class_id("red", ("Red Apple", "Red Car", "Blue Car"))
    with pytest.raises(ValueError, match="unknown label"):
        class_id("&", EMOJI)


def test_class_id_by_name_or_index():
    assert class_id("food", NAMES) == 2 and class_id("4", NAMES) == 4
    with pytest.raises(ValueError, match="unconditional"):
        class_id("1", ())
