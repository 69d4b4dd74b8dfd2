"""What the editing commands (inpaint, outpaint, img2img, interpolate) share: their flags, the checks
made before the network loads (so that a typo costs nothing), and how they write results."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..limits import EDITS
from .flags import add_conditioning, add_seed, check_guidance, check_steps
from .output import output_path, say, write_animation, write_images

LABEL_HELP = "class name or id for a conditional run (default: unconditional)"


def add_image(p) -> None:
    p.add_argument("--image", required=True, metavar="IMG",
                   help="the image to edit; converted to the run's channels and resized (center-cropped) "
                        "to its image size")


def add_common(p, out_help: str, gif: bool = True) -> None:
    add_conditioning(p, LABEL_HELP)
    add_seed(p, "result")
    p.add_argument("--out", required=True, metavar="FILE", help=out_help)
    if gif:
        p.add_argument("--gif", default=None, metavar="FILE.gif", help="also animate the reverse process")


def add_n(p, default: int, what: str = "results, each with its own seed") -> None:
    p.add_argument("--n", type=int, default=default, help=f"{what} (default {default}, at most {EDITS.hi:g})")


def add_inpaint_flags(p) -> None:
    from ..edit import DEFAULT_JUMP, DEFAULT_RESAMPLE, DEFAULT_STEPS, METHODS

    p.add_argument("--method", default="repaint", choices=METHODS,
                   help="repaint: go back up and resample so both regions agree (default); replace: one pass, fast")
    p.add_argument("--steps", type=int, default=None,
                   help=f"noise levels walked down (default {DEFAULT_STEPS['repaint']})")
    p.add_argument("--jump", type=int, default=None,
                   help=f"repaint: levels to go back up each time (default {DEFAULT_JUMP})")
    p.add_argument("--resample", type=int, default=None,
                   help=f"repaint: passes over each stretch of levels; 1 is replace (default {DEFAULT_RESAMPLE})")
    p.add_argument("--eta", type=float, default=None,
                   help="replace: 1 ancestral steps (default), 0 deterministic DDIM steps in the hole")
    add_n(p, 4)


def check(args, suffixes=(".png", ".npy"), n_min: int = 1) -> tuple[Path, Path | None]:
    """Flag values and output names that need no network."""
    out = output_path(args.out, suffixes)
    gif = getattr(args, "gif", None)
    gif = output_path(gif, (".gif",), "--gif") if gif else None
    EDITS.check(args.n, "--n")
    if args.n < n_min:
        raise UsageError(f"--n must be at least {n_min}, got {args.n}")
    check_steps(args.steps)
    check_guidance(args.guidance)
    if args.context and args.label is not None:
        raise UsageError("give --label or --context, not both")
    for flag in ("image", "mask"):
        path = getattr(args, flag, None)
        if path is not None and not Path(path).is_file():
            raise UsageError(f"--{flag} '{path}': no such file")
    return out, gif


def inpaint_options(args, run) -> tuple[dict, list[int] | None]:
    """The keyword arguments of edit.inpaint/outpaint from the flags, checked, and the class of each
    result where one was asked (for FILE.labels.npy)."""
    from ..edit import DEFAULT_JUMP, DEFAULT_RESAMPLE
    from .flags import conditioning

    if args.method == "repaint" and args.eta is not None:
        raise UsageError("--eta applies to --method replace only (RePaint's steps are ancestral)")
    if args.method == "replace" and (args.jump, args.resample) != (None, None):
        raise UsageError("--jump and --resample apply to --method repaint only")
    jump = DEFAULT_JUMP if args.jump is None else args.jump
    resample = DEFAULT_RESAMPLE if args.resample is None else args.resample
    if not 1 <= jump <= 1000 or not 1 <= resample <= 100:
        raise UsageError(f"--jump must lie in [1, 1000] and --resample in [1, 100], got {jump} and {resample}")
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UsageError(f"--eta must lie in [0, 1], got {args.eta}")
    asked = conditioning(args, run, args.n, default_label="none")
    return {"method": args.method, "steps": args.steps, "jump": jump, "resample": resample,
            "eta": 1.0 if args.eta is None else args.eta, "seed": args.seed, "clip_denoised": not args.no_clip,
            **asked.options()}, asked.labels


def recorder(gif: Path | None, total_steps: int):
    """The callback that keeps the animation's frames, or None without --gif."""
    from ..viz import FrameRecorder

    return FrameRecorder(total_steps) if gif is not None else None


def write(results, tiles, out: Path, labels, gif: Path | None, frames, what: str) -> None:
    """Results as .npy (like `sample`), or the tiles (input | ... | results, one row) as PNG; then the animation."""
    if out.suffix.lower() == ".npy":
        write_images(results, out, len(results), labels)
    else:
        write_images(tiles, out, len(tiles))
    say(f"{len(results)} {what}: {out}")
    if gif is not None:
        say(f"reverse process: {write_animation(frames, gif, nrow=len(results))}")


def load_image(args, run):
    from ..data import load_image as load

    return load(args.image, run.image_size, run.channels)
