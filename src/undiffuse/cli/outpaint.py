"""`undiffuse outpaint`: extend an image beyond its border."""
from __future__ import annotations

from ..errors import UsageError
from . import editing
from .flags import add_run, load_run, parse_ints


def add(sub) -> None:
    p = sub.add_parser("outpaint", help="extend an image beyond its border", description=(
        "Grow --image (first resized to the run's image size) by --pad pixels on each side and generate "
        "the new border so that it continues the image, the same way inpaint fills a hole. The network "
        "runs on the larger canvas; far beyond the size it was trained on it draws more of what it knows "
        "rather than one larger picture. The PNG shows the padded input | results."))
    add_run(p)
    editing.add_image(p)
    p.add_argument("--pad", required=True, metavar="LEFT,TOP,RIGHT,BOTTOM", help="pixels to add on each side")
    editing.add_inpaint_flags(p)
    editing.add_common(p, "FILE.png (padded input | results) or FILE.npy (results)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import torch
    import torch.nn.functional as F

    from ..edit import inpaint_moves, network_calls, outpaint

    out, gif = editing.check(args)
    pad = parse_ints(args.pad, "--pad", "LEFT,TOP,RIGHT,BOTTOM", 4)
    if min(pad) < 0 or max(pad) == 0:
        raise UsageError(f"--pad takes four pixel counts >= 0, not all 0, got '{args.pad}'")
    loaded = load_run(args)
    if max(pad) > 3 * loaded.image_size:
        raise UsageError(f"--pad adds at most {3 * loaded.image_size} pixels a side to this model's "
                         f"{loaded.image_size}x{loaded.image_size} images, got '{args.pad}'")
    options, labels = editing.inpaint_options(args, loaded)
    image = editing.load_image(args, loaded)
    moves = inpaint_moves(loaded.schedule.T, options["method"], options["steps"], options["jump"], options["resample"])
    frames = editing.recorder(gif, network_calls(moves))
    results = outpaint(loaded, image, pad, n=args.n, callback=frames, **options)
    left, top, right, bottom = pad
    canvas = F.pad(image[None], (left, right, top, bottom), value=0.0)
    editing.write(results, torch.cat([canvas, results]), out, labels, gif, frames and frames.frames,
                  "outpaintings")
    return 0
