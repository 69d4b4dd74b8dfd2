"""From what a user asks for to what n images are told to draw: the one set of rules that the command
line, the web page and the library share (`resolve`), and the one guidance default (the run's own,
`LoadedRun.guidance`).

What can be asked, by kind of run:
- class or attribute runs: `label` (a class name or id; "each" or "all": every class in turn; "none":
  unconditional), `labels` (a class id per image), `context` (a mixture "0.6*hero+0.4*food" or a vector
  "1,0,0,0,1") or `contexts` (a (n, K) tensor): one of them;
- text runs: `prompt` (every image) or `prompts` (cycled), and `negative_prompt`;
- unconditional runs, upscale runs among them: nothing;
and for both kinds of conditional run `guidance`, within limits.GUIDANCE.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .conditions import Classes, Condition, class_id, context_batch, one_hot, parse_context
from .conditions.prompt import Prompt
from .conditions.text import check_text
from .errors import UsageError
from .limits import GUIDANCE
from .memory import require

ASKS = ("label", "labels", "context", "contexts", "prompt", "prompts", "negative_prompt")
CYCLE = ("each", "all")  # label values that draw every class in turn (unless a class has that name)
NO_CLASS = (None, "none", *CYCLE)  # label values that ask for no particular class


@dataclass(frozen=True)
class Resolved:
    cond: Condition  # Condition() (no part): unconditional
    guidance: float  # 1.0 where there is nothing to guide
    labels: list[int] | None = None  # the class id of each image, where the request named classes
    per_row: int | None = None  # images per grid row: the class count when the images cycle through them

    def options(self) -> dict:
        """The keyword arguments of generate and the edits."""
        return {"cond": self.cond, "guidance": self.guidance}


def resolve(run, n: int, *, guidance: float | None = None, default: str = "each", label=None,
            labels: list[int] | None = None, context: str | None = None, contexts: Tensor | None = None,
            prompt: str | None = None, prompts: list[str] | None = None,
            negative_prompt: str | None = None) -> Resolved:
    """What n images of `run` are told to draw, and the guidance scale (the run's own by default).
    `default` is the label of a class run asked nothing: "each" (sample) or "none" (the edits)."""
    if guidance is not None:
        guidance = GUIDANCE.check(guidance)
    classes = {k: v for k, v in (("label", label), ("labels", labels), ("context", context),
                                 ("contexts", contexts)) if v is not None and not (k == "label" and v in NO_CLASS)}
    worded = prompt is not None or prompts is not None or negative_prompt is not None
    if run.text is not None:
        if classes:
            raise UsageError("this is a text model: it takes a prompt, not a label or a context")
        return _prompted(run, n, guidance, default, prompt, prompts, negative_prompt)
    if worded:
        raise UsageError("this is a class-conditional model: it takes a label, not a prompt" if run.class_names
                         else "this is an unconditional model: it takes no prompt")
    if not run.class_names:
        if classes or guidance is not None:
            raise UsageError("this is an unconditional model: it takes no label, context or guidance")
        return Resolved(Condition(), 1.0)
    if len(classes) > 1:
        raise UsageError(f"give a label or a context, not both ({' and '.join(classes)} were given)")
    return _classes(run, n, run.guidance if guidance is None else guidance, default if label is None else label,
                    labels, context, contexts)


def condition_for(run, n: int, cond: Condition | None = None, guidance: float | None = None,
                  default: str = "each", **ask) -> tuple[Condition | None, float]:
    """The condition and guidance of a library call: `cond` as given (already resolved: Condition() is
    unconditional), else `ask` resolved; guidance defaults to the run's own."""
    unknown = sorted(set(ask) - set(ASKS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
    if cond is None:
        resolved = resolve(run, n, guidance=guidance, default=default, **ask)
        return resolved.cond, resolved.guidance
    given = [k for k, v in ask.items() if v is not None]
    if given:
        raise UsageError(f"give cond or {', '.join(given)}, not both")
    return cond, (run.guidance if cond.steers else 1.0) if guidance is None else GUIDANCE.check(guidance)


def _classes(run, n, guidance, label, labels, context, contexts) -> Resolved:
    k = len(run.class_names)
    if context is not None:
        return Resolved(Condition(Classes.of(parse_context(str(context), run.class_names).expand(n, -1))), guidance)
    if contexts is not None:
        return Resolved(Condition(Classes.of(context_batch(contexts, n, run.class_names))), guidance)
    per_row = None
    if labels is None:
        label = str(label)
        if label == "none":
            return Resolved(Condition(), guidance)
        if label in CYCLE and label not in [str(c) for c in run.class_names]:
            labels, per_row = [i % k for i in range(n)], k
        else:
            labels = [class_id(label, run.class_names)] * n
    labels = [int(i) for i in labels]
    if len(labels) != n:
        raise UsageError(f"{len(labels)} labels for {n} images")
    if any(not 0 <= i < k for i in labels):
        raise UsageError(f"labels must lie in [0, {k - 1}]: this model has {k} classes")
    return Resolved(Condition(Classes.of(one_hot(torch.tensor(labels), k))), guidance, labels, per_row)


def _prompted(run, n, guidance, default, prompt, prompts, negative) -> Resolved:
    guidance = run.guidance if guidance is None else guidance
    if prompts is not None and prompt is not None:
        raise UsageError("give prompt or prompts, not both")
    if prompt is not None:
        prompts = [prompt]
    elif prompts is None and negative is None and default == "none":
        return Resolved(Condition(), guidance)  # an edit asked for no prompt: unconditional
    elif prompts is None:
        table = run.captions  # by default its training captions in turn (row 0 is the empty prompt)
        prompts = list(table.texts[1:]) if table is not None and len(table) > 1 and default != "none" else [""]
    if isinstance(prompts, str) or not len(prompts) or not all(isinstance(p, str) for p in prompts):
        raise UsageError("prompts must be a non-empty list of texts")
    for text in prompts:
        check_text(text, "the prompt")
    if negative is not None:
        check_text(negative, "the negative prompt")
    rows = n * (2 if negative is not None else 1)  # one token table a row: n x tokens x width floats
    require(f"the prompts of {n:,} images", 4 * rows * (run.text.max_tokens + 1) * run.text.dim,
            hint="fewer images at a time")
    text = run.encode([prompts[i % len(prompts)] for i in range(n)])
    against = run.encode([negative] * n) if negative is not None else None
    return Resolved(Condition(prompt=Prompt(text, against)), guidance)


__all__ = ["ASKS", "Resolved", "condition_for", "resolve"]
