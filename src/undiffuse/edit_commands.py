"""The editing subcommands of `undiffuse`: inpaint, outpaint, img2img, interpolate (the library is edit.py).

Each checks its flags and files before it loads the network, then writes a PNG grid (or the results
alone as .npy, as `sample` does) and, with --gif, the reverse process as an animation.
"""
from __future__ import annotations

from pathlib import Path

from .cli import UsageError
from .commands import _say, _sampler_options, _write_samples

MAX_N = 64


# --- flags shared by the four commands --------------------------------------------------------------

def _add_run(p, image: bool = True) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by `undiffuse train`")
    if image:
        p.add_argument("--image", required=True, metavar="IMG",
                       help="the image to edit; converted to the run's channels and resized (center-cropped) "
                            "to its image size")


def _add_common(p, out_help: str, gif: bool = True) -> None:
    p.add_argument("--label", default=None, help="class name or id for a conditional run (default: unconditional)")
    p.add_argument("--context", default=None,
                   help="a context instead of a label: a name, a mixture '0.6*3+0.4*8', or a vector '0,1,0,...'")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w with --label or --context (default 2)")
    p.add_argument("--seed", type=int, default=0, help="result i uses seed + i (default 0)")
    p.add_argument("--no-clip", action="store_true",
                   help="do not clip each step's clean-image estimate to the data range")
    p.add_argument("--out", required=True, metavar="FILE", help=out_help)
    if gif:
        p.add_argument("--gif", default=None, metavar="FILE.gif", help="also animate the reverse process")
    p.add_argument("--weights", default="ema", choices=("ema", "raw"), help="default: ema")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _add_inpaint_flags(p) -> None:
    from .edit import DEFAULT_JUMP, DEFAULT_RESAMPLE, DEFAULT_STEPS, METHODS

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
    p.add_argument("--n", type=int, default=4, help=f"results, each with its own seed (default 4, at most {MAX_N})")


def _check(args, n_min: int = 1) -> tuple[Path, Path | None]:
    """Flag values and output names that need no network: checked first, so that a typo costs nothing."""
    out = Path(args.out)
    suffixes = (".png", ".npy", ".gif") if args.command == "interpolate" else (".png", ".npy")
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"--out must end in {' or '.join(suffixes)}, got '{out}'")
    gif = getattr(args, "gif", None)
    if gif and not gif.lower().endswith(".gif"):
        raise UsageError(f"--gif must end in .gif, got '{gif}'")
    if not n_min <= args.n <= MAX_N:
        raise UsageError(f"--n must lie in [{n_min}, {MAX_N}], got {args.n}")
    if args.steps is not None and not 1 <= args.steps <= 100_000:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    if args.guidance is not None and not -1e3 < args.guidance < 1e3:
        raise UsageError(f"--guidance {args.guidance} is absurd")
    if args.context and args.label is not None:
        raise UsageError("give --label or --context, not both")
    for flag in ("image", "mask"):
        path = getattr(args, flag, None)
        if path is not None and not Path(path).is_file():
            raise UsageError(f"--{flag} '{path}': no such file")
    return out, Path(gif) if gif else None


def _check_inpaint(args) -> None:
    from .edit import DEFAULT_JUMP, DEFAULT_RESAMPLE

    if args.method == "repaint" and args.eta is not None:
        raise UsageError("--eta applies to --method replace only (RePaint's steps are ancestral)")
    if args.method == "replace" and (args.jump, args.resample) != (None, None):
        raise UsageError("--jump and --resample apply to --method repaint only")
    args.jump = DEFAULT_JUMP if args.jump is None else args.jump
    args.resample = DEFAULT_RESAMPLE if args.resample is None else args.resample
    if not 1 <= args.jump <= 1000 or not 1 <= args.resample <= 100:
        raise UsageError(f"--jump must lie in [1, 1000] and --resample in [1, 100], got {args.jump} and {args.resample}")
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UsageError(f"--eta must lie in [0, 1], got {args.eta}")


def _load(args):
    from .generate import load_run
    from .train import pick_device

    return load_run(args.run, weights=args.weights, device=pick_device(args.device))


def _conditioning(args, run, n: int) -> dict:
    """labels, contexts and guidance for the library, as `sample` reads --label/--context/--guidance."""
    from .conditioning import class_id, parse_context
    from .generate import DEFAULT_GUIDANCE

    if not run.num_classes and (args.label is not None or args.context or args.guidance is not None):
        raise UsageError(f"{args.run} is an unconditional model: it takes no --label, --context or --guidance")
    labels = [class_id(args.label, run.class_names)] * n if args.label is not None else None
    contexts = parse_context(args.context, run.class_names).expand(n, -1) if args.context else None
    guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    return {"labels": labels, "contexts": contexts, "guidance": guidance}


def _load_image(args, run):
    from .data import load_image

    return load_image(args.image, run.image_size, run.channels)


def _frames(gif: Path | None, total_steps: int):
    """([], None) without --gif; else the list that the callback fills with ~40 frames of x."""
    from .viz import keep_frames

    frames: list = []
    if gif is None:
        return frames, None
    keep = keep_frames(total_steps)

    def keep_frame(step):
        if step["i"] in keep:
            frames.append(step["x"].clamp(-1, 1).cpu())

    return frames, keep_frame


def _write(results, tiles, out: Path, labels, gif: Path | None, frames, what: str) -> None:
    """Results as .npy (like `sample`), or the grid `tiles` (one row) as PNG; then the animation."""
    if out.suffix.lower() == ".npy":
        _write_samples(results, labels, out, nrow=len(results))
    else:
        _write_samples(tiles, None, out, nrow=len(tiles))
    _say(f"{len(results)} {what}: {out}")
    if gif is not None:
        from .viz import save_gif

        _say(f"reverse process: {save_gif(frames, gif, nrow=len(results))}")


# --- inpaint -----------------------------------------------------------------------------------------

def add_inpaint(sub) -> None:
    p = sub.add_parser("inpaint", help="regenerate the masked part of an image", description=(
        "Fill the white part of --mask so that it agrees with the rest of --image. RePaint (Lugmayr et al. "
        "2022) walks down the noise levels, going back up --jump levels and down again --resample times, "
        "so that the two regions harmonise; --method replace makes one pass (faster, less coherent). "
        "The PNG shows input | mask | results."))
    _add_run(p)
    p.add_argument("--mask", required=True, metavar="MASK.png",
                   help="white: regenerate, black: keep; resized (nearest pixels) like the image")
    _add_inpaint_flags(p)
    _add_common(p, "FILE.png (input | mask | results) or FILE.npy (results)")
    p.set_defaults(handler=run_inpaint)


def run_inpaint(args) -> int:
    import torch

    from .edit import inpaint, load_mask

    out, gif = _check(args)
    _check_inpaint(args)
    run = _load(args)
    options = _inpaint_options(args, run)
    image = _load_image(args, run)
    mask = load_mask(args.mask, run.image_size, like=args.image)
    if not mask.any():
        raise UsageError(f"mask '{args.mask}' is all black: nothing to regenerate (white marks the pixels to redo)")
    frames, callback = _frames(gif, options.pop("calls"))
    results = inpaint(run, image, mask, n=args.n, callback=callback, **options)
    mask_tile = (mask * 2 - 1).expand(run.channels, -1, -1)
    tiles = torch.cat([image[None], mask_tile[None], results])
    _write(results, tiles, out, options["labels"], gif, frames, "inpaintings")
    return 0


def _inpaint_options(args, run) -> dict:
    from .edit import inpaint_moves, network_calls

    calls = network_calls(inpaint_moves(run.schedule.T, args.method, args.steps, args.jump, args.resample))
    return {"method": args.method, "steps": args.steps, "jump": args.jump, "resample": args.resample,
            "eta": 1.0 if args.eta is None else args.eta, "seed": args.seed, "clip_denoised": not args.no_clip,
            "calls": calls, **_conditioning(args, run, args.n)}


# --- outpaint ----------------------------------------------------------------------------------------

def add_outpaint(sub) -> None:
    p = sub.add_parser("outpaint", help="extend an image beyond its border", description=(
        "Grow --image (first resized to the run's image size) by --pad pixels on each side and generate "
        "the new border so that it continues the image, the same way inpaint fills a hole. The network "
        "runs on the larger canvas; far beyond the size it was trained on it draws more of what it knows "
        "rather than one larger picture. The PNG shows the padded input | results."))
    _add_run(p)
    p.add_argument("--pad", required=True, metavar="LEFT,TOP,RIGHT,BOTTOM", help="pixels to add on each side")
    _add_inpaint_flags(p)
    _add_common(p, "FILE.png (padded input | results) or FILE.npy (results)")
    p.set_defaults(handler=run_outpaint)


def run_outpaint(args) -> int:
    import torch
    import torch.nn.functional as F

    from .edit import outpaint

    out, gif = _check(args)
    _check_inpaint(args)
    pad = _parse_ints(args.pad, "--pad", "LEFT,TOP,RIGHT,BOTTOM", 4)
    if min(pad) < 0 or max(pad) == 0:
        raise UsageError(f"--pad takes four pixel counts >= 0, not all 0, got '{args.pad}'")
    run = _load(args)
    if max(pad) > 3 * run.image_size:
        raise UsageError(f"--pad adds at most {3 * run.image_size} pixels a side to this model's "
                         f"{run.image_size}x{run.image_size} images, got '{args.pad}'")
    options = _inpaint_options(args, run)
    image = _load_image(args, run)
    frames, callback = _frames(gif, options.pop("calls"))
    results = outpaint(run, image, pad, n=args.n, callback=callback, **options)
    left, top, right, bottom = pad
    canvas = F.pad(image[None], (left, right, top, bottom), value=0.0)
    _write(results, torch.cat([canvas, results]), out, options["labels"], gif, frames, "outpaintings")
    return 0


def _parse_ints(text: str, flag: str, form: str, count: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UsageError(f"{flag} must be {form} ({count} integers), got '{text}'")
    return values


# --- img2img -----------------------------------------------------------------------------------------

def add_img2img(sub) -> None:
    from .generate import DEFAULT_SAMPLER
    from .samplers import SAMPLERS

    p = sub.add_parser("img2img", help="turn a sketch or another image into a sample (SDEdit)", description=(
        "Noise --image to step round(S * T) and denoise it (SDEdit, Meng et al. 2022): low strengths keep "
        "the image, high ones keep only its rough layout, 1 ignores it. With a conditional run, --label 8 "
        "turns a 3 into an 8 in the same hand. The PNG shows input | results."))
    _add_run(p)
    p.add_argument("--strength", type=float, required=True, metavar="S",
                   help="0 returns the image, 1 ignores it (0.5 to 0.8 is typical)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS), help=f"default: {DEFAULT_SAMPLER}")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps from the starting noise level down (default: the sampler's usual number)")
    p.add_argument("--eta", type=float, default=None, help="noise scale of ddim and euler-a (ddim default 0)")
    p.add_argument("--n", type=int, default=4, help=f"results, each with its own seed (default 4, at most {MAX_N})")
    _add_common(p, "FILE.png (input | results) or FILE.npy (results)")
    p.set_defaults(handler=run_img2img, no_noise=False, spacing=None)


def run_img2img(args) -> int:
    import torch

    from .edit import img2img, sdedit_plan

    out, gif = _check(args)
    if not 0 <= args.strength <= 1:
        raise UsageError(f"--strength must lie in [0, 1], got {args.strength}")
    options = _sampler_options(args)
    run = _load(args)
    options.update(_conditioning(args, run, args.n))
    image = _load_image(args, run)
    frames, callback = _frames(gif, max(1, sdedit_plan(run.schedule.T, args.strength, args.sampler, args.steps)[1]))
    results = img2img(run, image, strength=args.strength, n=args.n, callback=callback, **options)
    if gif is not None and not frames:  # strength 0: nothing was denoised
        frames.append(results)
    _write(results, torch.cat([image[None], results]), out, options["labels"], gif, frames,
           f"images at strength {args.strength:g}")
    return 0


# --- interpolate -------------------------------------------------------------------------------------

def add_interpolate(sub) -> None:
    from .generate import DEFAULT_SAMPLER
    from .samplers import SAMPLERS, STOCHASTIC

    p = sub.add_parser("interpolate", help="morph between two seeds' samples", description=(
        "Walk the great circle between the starting noise of two seeds (spherical interpolation) and "
        "denoise every point with the same deterministic sampler: the ends are `sample`'s images for "
        "those seeds, and the ones between change smoothly. A strip (PNG), an animation (GIF) or .npy."))
    _add_run(p, image=False)
    p.add_argument("--seeds", required=True, metavar="A,B", help="the two seeds at the ends")
    p.add_argument("--n", type=int, default=8, help=f"images along the way, ends included (default 8, at most {MAX_N})")
    deterministic = [s for s in SAMPLERS if s not in STOCHASTIC]
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=deterministic, help=f"default: {DEFAULT_SAMPLER}")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's usual number)")
    _add_common(p, "strip.png, strip.gif or FILE.npy", gif=False)
    p.set_defaults(handler=run_interpolate)


def run_interpolate(args) -> int:
    from .edit import interpolate

    out, _ = _check(args, n_min=2)
    seeds = _parse_ints(args.seeds, "--seeds", "A,B", 2)
    run = _load(args)
    conditioning = _conditioning(args, run, args.n)
    strip = interpolate(run, seeds, args.n, sampler=args.sampler, steps=args.steps,
                        clip_denoised=not args.no_clip, **conditioning)
    if out.suffix.lower() == ".gif":
        from .viz import save_gif

        frames = [strip[i:i + 1] for i in [*range(args.n), *range(args.n - 2, 0, -1)]]  # there and back
        save_gif(frames, out, nrow=1, seconds=0.25 * len(frames), hold=0.25)
    else:
        _write_samples(strip, conditioning["labels"], out, nrow=args.n)
    _say(f"{args.n} images from seed {seeds[0]} to seed {seeds[1]}: {out}")
    return 0
