"""Flags that several commands share (the run, the device, sampling, conditioning, the output), the
checks they need, and flags generated from a config dataclass."""
from __future__ import annotations

import argparse
import inspect
import re
import sys
from dataclasses import MISSING, fields
from typing import get_type_hints

from ..errors import UsageError
from ..limits import GUIDANCE, SEED, STEPS

MAX_TOML_BYTES = 2**20  # a training config is a few hundred bytes


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


# --- groups of flags ---------------------------------------------------------------------------------

def add_run(p, weights: bool = True) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by `undiffuse train`")
    if weights:
        p.add_argument("--weights", default="ema", choices=("ema", "raw"), help="default: ema")
    add_device(p)


def add_device(p) -> None:
    from ..precision import PRECISIONS

    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the network's arithmetic; auto (default): bf16 where this machine has bf16 units and a "
                        "probe of the model times it faster, else fp32")


def add_sampling(p, *, deterministic_only: bool = False, spacing: bool = True) -> None:
    """--sampler, --steps, and the options some samplers take (checked by sampler_options)."""
    from ..generation import DEFAULT_SAMPLER
    from ..samplers import REGISTRY, SPACINGS

    names = [n for n, s in REGISTRY.items() if not (deterministic_only and s.stochastic)]
    p.add_argument("--sampler", default=None, choices=names,
                   help=f"default: the run's, in its config.json: {DEFAULT_SAMPLER} for digits, dpmpp-2m for colour "
                        "(see BENCHMARKS.md, quality per step)")
    defaults = ", ".join(f"{n} {s.default_steps}" for n, s in REGISTRY.items() if s.default_steps and n in names)
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps (heun makes 2 network calls a step; ddpm always walks all T); default: {defaults}")
    if spacing:
        p.add_argument("--spacing", default=None, choices=SPACINGS,
                       help="where the steps fall: uniform in t (trailing, the default; leading; linspace) or karras")
    if not deterministic_only:
        p.add_argument("--eta", type=float, default=None,
                       help="noise scale of ddim and euler-a: 0 deterministic, 1 DDPM-like (euler-a default 1)")
        p.add_argument("--no-noise", action="store_true",
                       help="ddpm without its extra noise (samples collapse to blurry averages: for teaching)")
    p.set_defaults(spacing=None, eta=None, no_noise=False)


def add_conditioning(p, label_help: str) -> None:
    p.add_argument("--label", default=None, help=label_help)
    p.add_argument("--context", default=None,
                   help="a context instead of a label: a name, a mixture '0.6*3+0.4*8', or a vector '0,1,0,...'")
    p.add_argument("--prompt", default=None,
                   help="a text run: what to draw, e.g. 'a handwritten seven' (sample's default: its training captions in turn)")
    p.add_argument("--negative-prompt", default=None,
                   help="a text run: what to steer away from; it replaces the unconditional branch of guidance")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale w in {GUIDANCE.range} (1: conditional, 0: unconditional; "
                        "default: the run's, in its config.json: 2 for digits, 3 for colour)")
    p.add_argument("--no-clip", action="store_true",
                   help="do not clip each step's clean-image estimate to the data range")


def add_seed(p, what: str = "image", help: str | None = None) -> None:
    """--seed, an integer within limits.SEED (the one range every seed flag and option shares)."""
    def seed(text: str) -> int:
        try:
            return SEED.check(int(text))
        except ValueError as e:  # not an integer, or out of range
            raise argparse.ArgumentTypeError(str(e) if isinstance(e, UsageError) else
                                             f"seed must be a whole number in {SEED.range}, got {text!r}") from None

    p.add_argument("--seed", type=seed, default=0,
                   help=f"{help or f'{what} i uses seed + i'}, in {SEED.range} (default 0)")


# --- checks ------------------------------------------------------------------------------------------

def sampler_options(args, run) -> dict:
    """The sampler's keyword arguments from --sampler/--steps/--spacing/--eta/--no-noise, each option
    accepted only by the samplers whose record lists it; no --sampler: the run's own (LoadedRun.sampler)."""
    from .. import samplers

    record = samplers.get(args.sampler or run.sampler)
    check_steps(args.steps)
    options = {"sampler": record.name, "steps": args.steps, "clip_denoised": not getattr(args, "no_clip", False)}
    if args.no_noise and "add_noise" not in record.options:
        raise UsageError(f"--no-noise applies to {_takers('add_noise')} only")
    if args.eta is not None and "eta" not in record.options:
        raise UsageError(f"--eta applies to {_takers('eta')} only")
    if args.spacing is not None and record.walks_every_step:
        raise UsageError(f"{record.name} walks every step: --spacing does not apply")
    if "add_noise" in record.options:
        options["add_noise"] = not args.no_noise
    if args.eta is not None:
        if not 0 <= args.eta <= 1:
            raise UsageError(f"--eta must lie in [0, 1], got {args.eta}")
        options["eta"] = args.eta
    if args.spacing is not None:
        options["spacing"] = args.spacing
    return options


def _takers(option: str) -> str:
    from ..samplers import REGISTRY

    return " and ".join(n for n, s in REGISTRY.items() if option in s.options)


def check_steps(steps: int | None) -> None:
    if steps is not None:
        STEPS.check(steps, "--steps")


def check_guidance(guidance: float | None) -> None:
    if guidance is not None:
        GUIDANCE.check(guidance, "--guidance")


def conditioning(args, run, n: int, default_label: str, labels: list[int] | None = None):
    """What n images are told to draw, from --label/--context/--prompt/--negative-prompt/--guidance, by
    the rules every door shares (conditioning.resolve): a Resolved."""
    from ..conditioning import resolve

    check_guidance(args.guidance)
    return resolve(run, n, guidance=args.guidance, default=default_label, label=args.label, labels=labels,
                   context=args.context, prompt=getattr(args, "prompt", None),
                   negative_prompt=getattr(args, "negative_prompt", None))


def parse_ints(text: str, flag: str, form: str, count: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UsageError(f"{flag} must be {form} ({count} integers), got '{text}'")
    return values


def load_run(args):
    """The run named on the command line, on --device, with --weights, its --precision decided (a
    choice slower than fp32 here is said on stderr)."""
    from ..device import pick_device
    from ..generation import load_run as load

    run = load(args.run, weights=getattr(args, "weights", "ema"), device=pick_device(args.device),
               precision=args.precision)
    if run.precision.warning:
        print(f"undiffuse: warning: {run.precision.warning}", file=sys.stderr)
    return run


def add_training_flags(p, names) -> None:
    """--quiet and the training options `names` as flags: what the commands that train from a base run
    (finetune, distill) share."""
    from ..training.config import GROUPS, TrainConfig

    p.add_argument("--quiet", action="store_true", help="no progress bar")
    skip = set(TrainConfig().options()) - set(names)
    for options in GROUPS.values():
        add_config_flags(p, options, TrainConfig.choices(), skip=skip)


def with_budget(values: dict, minutes: float) -> dict:
    """`values` with a budget of `minutes` where neither --steps nor --minutes was typed."""
    return values if "steps" in values or "minutes" in values else {**values, "minutes": minutes}


# --- flags generated from a config dataclass ---------------------------------------------------------

def add_config_flags(parser: argparse.ArgumentParser, cls, choices: dict[str, tuple], skip=()) -> None:
    """One --flag per dataclass field; help from the field's trailing comment, choices where given.

    Defaults are SUPPRESSed so that only the flags a user typed appear in the namespace, which lets
    a TOML file sit between the dataclass defaults and the flags.
    """
    hints, comments = get_type_hints(cls), _field_comments(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = scalar_type(hints[f.name])
        default = None if f.default is MISSING else f.default
        help_text = f"{comments.get(f.name, '')} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, choices=choices.get(f.name),
                                default=argparse.SUPPRESS, metavar=f.name.upper() if f.name not in choices else None,
                                help=help_text)


def scalar_type(hint):
    for kind in (bool, int, float, str):
        if hint is kind or kind in getattr(hint, "__args__", ()):
            return kind
    raise TypeError(f"no flag type for {hint}")


def _field_comments(cls) -> dict[str, str]:
    """`name: type = default  # comment` -> {name: comment}"""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def config_values(args: argparse.Namespace, names) -> dict:
    """The options a TOML file (--config) and the typed flags set, flags winning; `names` are the
    options known. Their types and ranges are checked once, by the config they build."""
    values = {}
    if getattr(args, "config", None):
        values.update(read_toml(args.config, names))
    values.update({k: v for k, v in vars(args).items() if k in names})
    return values


def read_toml(path: str, names) -> dict:
    """The options of a TOML file (dashes or underscores), refusing keys that are not in `names`."""
    import tomllib

    from ..files import read_limited

    data = read_limited(path, MAX_TOML_BYTES, "config file")
    try:
        values = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UsageError(f"config file '{path}' is not valid TOML ({str(e)[:200]})") from None
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UsageError(f"config file '{path}': unknown key(s) {', '.join(unknown)[:200]}; "
                         f"known: {', '.join(sorted(names))}")
    return values
