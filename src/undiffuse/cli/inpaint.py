"""`undiffuse inpaint`: regenerate the masked part of an image."""
from __future__ import annotations

from ..errors import UsageError
from . import editing
from .flags import add_run, load_run


def add(sub) -> None:
    p = sub.add_parser("inpaint", help="regenerate the masked part of an image", description=(
        "Fill the white part of --mask so that it agrees with the rest of --image. RePaint (Lugmayr et al. "
        "2022) walks down the noise levels, going back up --jump levels and down again --resample times, "
        "so that the two regions harmonise; --method replace makes one pass (faster, less coherent). "
        "The PNG shows input | mask | results."))
    add_run(p)
    editing.add_image(p)
    p.add_argument("--mask", required=True, metavar="MASK.png",
                   help="white (or painted, where the mask has transparency): regenerate; black: keep")
    editing.add_inpaint_flags(p)
    editing.add_common(p, "FILE.png (input | mask | results) or FILE.npy (results)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import torch

    from ..edit import inpaint, inpaint_moves, load_mask, network_calls

    out, gif = editing.check(args)
    loaded = load_run(args)
    options, labels = editing.inpaint_options(args, loaded)
    image = editing.load_image(args, loaded)
    mask = load_mask(args.mask, loaded.image_size, like=args.image)
    if not mask.any():
        raise UsageError(f"mask '{args.mask}' is all black: nothing to regenerate (white marks the pixels to redo)")
    moves = inpaint_moves(loaded.schedule.T, options["method"], options["steps"], options["jump"], options["resample"])
    frames = editing.recorder(gif, network_calls(moves))
    results = inpaint(loaded, image, mask, n=args.n, callback=frames, **options)
    mask_tile = (mask.float() * 2 - 1).expand(loaded.channels, -1, -1)
    tiles = torch.cat([image[None], mask_tile[None], results])
    editing.write(results, tiles, out, labels, gif, frames and frames.frames, "inpaintings")
    return 0
