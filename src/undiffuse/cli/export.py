"""`undiffuse export`: a run as a diffusers folder."""
from __future__ import annotations

from .output import say

FORMATS = ("diffusers",)


def add(sub) -> None:
    p = sub.add_parser("export", help="write a run as a diffusers folder", description=(
        "Write RUN as a diffusers folder OUT, safetensors only: an unconditional run loads with "
        "DDPMPipeline.from_pretrained(OUT), a class-conditional one with UNet2DModel.from_pretrained(OUT, "
        "subfolder='unet') and DDPMScheduler.from_pretrained(OUT, subfolder='scheduler'), class id K (the "
        "number of classes) being the null class for classifier-free guidance. Runs trained with "
        "--block-style adm map exactly (the eps of both networks is compared before OUT is written); "
        "film runs and padded image sizes are refused."))
    p.add_argument("run", metavar="RUN", help="a run folder written by `undiffuse train`")
    p.add_argument("--to", required=True, choices=FORMATS, help="the format to write: diffusers")
    p.add_argument("out", metavar="OUT", help="the folder to write")
    p.add_argument("--weights", default="ema", choices=("ema", "raw"), help="default: ema")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier export")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..interop.folders import export_run

    done = export_run(args.run, args.out, weights=args.weights, overwrite=args.overwrite)
    classes = f"{done.classes} classes, null class id {done.classes}" if done.classes else "unconditional"
    say(f"exported {args.run} ({args.weights} weights, {classes}) to {done.out} in {done.seconds:.1f} s; "
        f"max |eps difference| from undiffuse's network: {done.max_eps_difference:.2g}")
    if done.classes:
        say(f"load it: UNet2DModel.from_pretrained('{done.out}', subfolder='unet'), "
            f"DDPMScheduler.from_pretrained('{done.out}', subfolder='scheduler')")
    else:
        say(f"load it: DDPMPipeline.from_pretrained('{done.out}')")
    return 0
