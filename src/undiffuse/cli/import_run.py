"""`undiffuse import`: a run folder from a diffusers UNet2DModel and its scheduler."""
from __future__ import annotations

from .output import say


def add(sub) -> None:
    p = sub.add_parser("import", help="make a run folder of a diffusers UNet2DModel", description=(
        "Write a run folder RUN from FOLDER, a UNet2DModel and its scheduler as save_pretrained writes "
        "them (FOLDER/unet and FOLDER/scheduler, as in a DDPMPipeline folder, or FOLDER itself holding the "
        "UNet's config.json), so that sample, eval, the edits and serve work on it. Safetensors only. The "
        "UNet must use blocks undiffuse computes (DownBlock2D/AttnDownBlock2D, resnet_time_scale_shift "
        "scale_shift, a mid attention with a GroupNorm); a class-conditional one (num_class_embeds = K + 1) "
        "takes its last class id as the null class. Anything else is refused, naming the key."))
    p.add_argument("folder", metavar="FOLDER", help="a diffusers folder")
    p.add_argument("--out", required=True, metavar="RUN", help="the run folder to write")
    p.add_argument("--class-names", default=None, metavar="A,B,...",
                   help="names of the classes (default: those undiffuse exported, else 0..K-1)")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="the data the model learned, which eval compares against (default: unknown)")
    p.add_argument("--overwrite", action="store_true", help="replace RUN if it is a run folder")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..interop.folders import import_folder

    names = [n.strip() for n in args.class_names.split(",")] if args.class_names is not None else None
    done = import_folder(args.folder, args.out, overwrite=args.overwrite, class_names=names, data=args.data)
    classes = f"{done.classes} classes" if done.classes else "unconditional"
    say(f"imported {args.folder} ({classes}) as {done.out} in {done.seconds:.1f} s; "
        f"max |eps difference| from the diffusers network: {done.max_eps_difference:.2g}")
    return 0
