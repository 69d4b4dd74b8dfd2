"""`undiffuse eval`: score a run's samples against real images (FID, KID, precision/recall)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import DataError, UsageError
from ..limits import EVAL_IMAGES, GUIDANCE
from .flags import add_device, add_seed, check_guidance, load_run, sampler_options
from .output import output_path, say, write_picture



def add(sub) -> None:
    from ..eval.metrics import FEATURES
    from ..samplers import REGISTRY

    p = sub.add_parser("eval", help="score a run's samples against real images (FID, KID, precision/recall)",
                       description=(
        "Generate --n samples with a trained run (or read --samples), and score them against the run's "
        "training data (or --against SPEC): FID, KID with its standard error, and precision/recall "
        "(k = 3). Digit runs are scored in the space of a small digit classifier shipped with undiffuse; "
        "other runs by Inception-v3 as in FID (its weights must be on the machine). Prints a table and "
        "writes RUN/eval.json (eval-2.json, ... when taken)."))
    p.add_argument("run", metavar="RUN", help="a run folder written by `undiffuse train`")
    p.add_argument("--n", type=int, default=5000, help="samples to generate, in all (default 5000)")
    p.add_argument("--samples", default=None, metavar="FILE.npy",
                   help="score these images instead: float32 N x C x H x W in [0, 1], as `sample --out F.npy` writes")
    p.add_argument("--sampler", default=None, choices=list(REGISTRY), help="default: the sample command's")
    p.add_argument("--steps", type=int, default=None, help="network evaluations (default: the sampler's)")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale w in {GUIDANCE.range} (default: the run's)")
    add_seed(p, "sample")
    p.add_argument("--against", default=None, metavar="SPEC", help="real images (default: the run's training data)")
    p.add_argument("--features", default=None, choices=FEATURES,
                   help="feature space (default: digits for mnist/digits runs, else inception)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pt_inception-2015-12-05-6726825d.pth (default: torch's hub cache)")
    p.add_argument("--batch-size", type=int, default=250, help="images per batch (default 250)")
    p.add_argument("--compile", default="auto", choices=("auto", "yes", "no"),
                   help="torch.compile the network for sampling; auto (default): when the batches after the "
                        "first would take over 4 minutes, which its compile time repays")
    p.add_argument("--out", default=None, metavar="FILE.json", help="default: RUN/eval.json, or eval-N.json")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run, eta=None, no_noise=False, no_clip=False, spacing=None)


def run(args) -> int:
    from ..checkpoint import atomic_write
    from ..device import pick_device
    from ..eval.evaluate import default_features, read_samples, real_images
    from ..eval.memorisation import summary
    from ..eval.metrics import feature_extractor, score_features
    from ..run import read_run
    from ..training.card import write_card

    record = read_run(args.run)
    out = _output(args)
    _check(args)
    spec = args.against or record.data_source
    size, channels = record.image_size, record.channels
    real = real_images(spec, size, channels)
    features = args.features or default_features(spec)
    device = pick_device(args.device)
    extract = feature_extractor(features, args.inception_weights, device, batch_size=args.batch_size)
    if args.samples:
        fake, source = read_samples(args.samples, channels, size), {"samples": str(args.samples)}
    else:
        fake, source = _samples(args)
    real_f, fake_f = extract(real), extract(fake)
    result = {**score_features(real_f, fake_f), "features": features, "run": str(args.run), "against": spec,
              **source}
    copies = _memorisation(record, spec, real, real_f, fake, fake_f, extract)
    if copies is not None:
        result["memorisation"] = summary(copies)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    _print_scores(result)
    say(f"written: {out}")
    if out.parent.resolve() == Path(args.run).resolve():  # the run's own scores: into its model card
        say(f"model card: {write_card(args.run)}")
    if copies is not None:
        say(f"closest pairs (generated above, nearest training image below): {_closest(copies, fake, out)}")
    return 0


def _memorisation(record, spec, real, real_f, fake, fake_f, extract):
    """Memorisation against the run's training images (those of --against when they are the same)."""
    from ..eval.evaluate import real_images
    from ..eval.memorisation import memorisation

    if not record.data_source:
        return None
    if spec != record.data_source:
        try:
            real = real_images(record.data_source, record.image_size, record.channels)
        except DataError:  # an imported run, or training data no longer where it was
            say(f"memorisation not measured: the training data {record.data_source!r} cannot be loaded")
            return None
        real_f = extract(real)
    scores = memorisation(fake, real, fake_f, real_f)
    scores["training"] = real
    return scores


def _closest(scores: dict, fake, out: Path) -> Path:
    from ..eval.memorisation import closest_pairs
    from ..viz import image_grid

    path = out.with_name(out.stem + "-closest.png")
    k = min(8, len(fake))
    write_picture(image_grid(closest_pairs(fake, scores["training"], scores, k=k), nrow=k), path)
    return path


def _check(args) -> None:
    if not 1 <= args.batch_size <= 100_000:
        raise UsageError(f"--batch-size must lie in [1, 100000], got {args.batch_size}")
    sampling = [f for f, v in (("--sampler", args.sampler), ("--steps", args.steps), ("--guidance", args.guidance))
                if v is not None]
    if args.samples and sampling:
        raise UsageError(f"--samples scores a file; drop {', '.join(sampling)}")
    if not args.samples:
        EVAL_IMAGES.check(args.n, "--n")
    check_guidance(args.guidance)


def _print_scores(result: dict) -> None:
    say(f"{result['n_fake']} samples of {result['run']} against {result['n_real']} images of "
        f"{result['against']}, {result['features']} features")
    say("| metric | value |\n|---|---|\n"
        f"| FID | {result['fid']:.3f} |\n| KID | {result['kid']:.5f} ± {result['kid_std']:.5f} |\n"
        f"| precision | {result['precision']:.3f} |\n| recall | {result['recall']:.3f} |"
        + _fidelity_row(result) + "".join(_memorisation_rows(result.get("memorisation", {}))))


def _fidelity_row(result: dict) -> str:
    if "fidelity" not in result:
        return ""
    ceiling = f" (the judge reads {result['judge_accuracy']:.3f} of held-out real images right)" \
        if result.get("judge_accuracy") is not None else ""
    return f"\n| fidelity: read as the class asked by the {result['judge']} judge{ceiling} | {result['fidelity']:.3f} |"


def _memorisation_rows(scores: dict):
    """Distance to the nearest training image over the training set's own nearest-neighbour distance
    (1: as novel as a real image), and the share of near copies, in each space measured."""
    for space in ("pixels", "features"):
        if space in scores:
            s = scores[space]
            yield (f"\n| nearest training image, distance ratio ({space}) | {s['median_ratio']:.2f} |"
                   f"\n| near copies, ratio < {scores['copy_ratio']:.2f} ({space}) | {100 * s['near_copies']:.1f}% |")


def _output(args) -> Path:
    from ..eval.evaluate import free_path

    if args.out is None:
        return free_path(Path(args.run))
    out = output_path(args.out, (".json",))
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; choose another --out or add --overwrite")
    return out


def _samples(args):
    """Generate --n samples; conditional runs cycle through their classes."""
    from ..eval.evaluate import generate_in_batches
    from ..generation import run_steps

    run = load_run(args)
    options = sampler_options(args, run)
    if run.task == "upscale":
        raise UsageError(f"{args.run} upscales by {run.factor}: it does not generate from noise, so eval has "
                         "nothing to draw; score upscaled images with --samples FILE.npy")
    start = time.perf_counter()
    images = generate_in_batches(run, args.n, batch_size=args.batch_size, seed=args.seed, progress=not args.quiet,
                                 compile=args.compile, guidance=args.guidance, **options)
    guidance = run.guidance if args.guidance is None else args.guidance
    steps = run_steps(run, options["sampler"], options["steps"])  # what generate walks (None: the sampler's default)
    source = {"sampler": options["sampler"], "steps": steps,
              "guidance": guidance if run.num_classes or run.text is not None else None, "seed": args.seed,
              "sampling_precision": run.precision.name,
              "samples_per_second": args.n / (time.perf_counter() - start)}
    return images, {**source, **_fidelity(run, images, args.device)}


def _fidelity(run, images, device) -> dict:
    """A run on the classes of a shipped judge (the digits, the emoji categories): the share of its
    samples the judge reads as the class asked, beside the judge's own accuracy on real images."""
    from ..device import pick_device
    from ..eval.evaluate import balanced_labels
    from ..eval.judges import fidelity, judge_for

    judge = judge_for(run.class_names)
    if judge is None:
        return {}
    return {"fidelity": fidelity(judge, images, balanced_labels(run, len(images)), pick_device(device)),
            "judge": judge.name, "judge_accuracy": judge.accuracy()}
