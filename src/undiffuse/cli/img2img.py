"""`undiffuse img2img`: turn a sketch or another image into a sample (SDEdit)."""
from __future__ import annotations

from ..errors import UsageError
from . import editing
from .flags import add_run, add_sampling, conditioning, load_run, sampler_options


def add(sub) -> None:
    p = sub.add_parser("img2img", help="turn a sketch or another image into a sample (SDEdit)", description=(
        "Noise --image to step round(S * T) and denoise it (SDEdit, Meng et al. 2022): low strengths keep "
        "the image, high ones keep only its rough layout, 1 ignores it. With a conditional run, --label 8 "
        "turns a 3 into an 8 in the same hand. The PNG shows input | results."))
    add_run(p)
    editing.add_image(p)
    p.add_argument("--strength", type=float, required=True, metavar="S",
                   help="0 returns the image, 1 ignores it (0.5 to 0.8 is typical)")
    add_sampling(p, spacing=False)
    editing.add_n(p, 4)
    editing.add_common(p, "FILE.png (input | results) or FILE.npy (results)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import torch

    from ..edit import img2img, sdedit_plan

    out, gif = editing.check(args)
    if not 0 <= args.strength <= 1:
        raise UsageError(f"--strength must lie in [0, 1], got {args.strength}")
    loaded = load_run(args)
    options = sampler_options(args, loaded)
    asked = conditioning(args, loaded, args.n, default_label="none")
    options.update(asked.options())
    image = editing.load_image(args, loaded)
    frames = editing.recorder(gif, max(1, sdedit_plan(loaded.schedule.T, args.strength, options["sampler"], args.steps)[1]))
    results = img2img(loaded, image, strength=args.strength, n=args.n, seed=args.seed, callback=frames, **options)
    if frames is not None and not frames.frames:  # strength 0: nothing was denoised
        frames.frames.append(results)
    editing.write(results, torch.cat([image[None], results]), out, asked.labels, gif,
                  frames and frames.frames, f"images at strength {args.strength:g}")
    return 0
