"""What the page of `undiffuse serve` asks for, checked into jobs (jobs.py runs them one at a time).

A request is a JSON object: numbers, names, and images as PNG data URLs. `parse_generate`,
`parse_inpaint`, `parse_img2img` and `parse_upscale` (for an upscale run: the others are for runs that
generate) turn one into a `Job` or raise `RequestError` with a message for the page. `JobQueue` runs jobs one after another on a single worker thread (so that a second
browser tab waits instead of doubling the memory) and streams each job's events:

    {"type": "queue", "ahead": k}                         waiting behind k jobs
    {"type": "start", "total": steps}                     sampling has begun
    {"type": "frame", "frame": j, "step": i, "total": steps, "png": data URL}   about FRAMES of them
    {"type": "image", "png": data URL, "width", "height", "n", "nrow", "cell", "pad", "seconds"}
    {"type": "error", "message": text}

No web framework is imported here: app.py puts this behind HTTP.
"""
from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field

from PIL import Image
from torch import Tensor

from .. import edit
from ..conditioning import resolve
from ..conditions.lowres import DEFAULT_AUG
from ..data.decode import decode_picture, image_tensor
from ..errors import DataError, RequestError, UsageError
from ..generation import LoadedRun, run_steps
from ..guidance import branches
from ..limits import GUIDANCE, PAGE_IMAGES, PAGE_SECONDS, PAGE_STEPS, PAGE_WORK, SEED, Limit
from ..samplers import REGISTRY, steps_walked

MAX_N, MAX_STEPS, MAX_GUIDANCE, MAX_WORK = int(PAGE_IMAGES.hi), int(PAGE_STEPS.hi), GUIDANCE.hi, PAGE_WORK
MAX_RESAMPLE = 20  # RePaint passes per jump
MAX_UPLOAD_BYTES = 4 * 2**20  # one decoded image
MAX_SIDE = 1024  # pixels, either side of an uploaded image
FRAMES = 30  # intermediate pictures streamed per job
SHOW = ("x", "x0")  # what the frames picture: the noisy x_t, or the network's estimate of the clean image


@dataclass
class Job:
    kind: str  # generate | inpaint | img2img | upscale
    n: int  # images made
    nrow: int  # images per row of the grid
    total: int  # sampler steps the callback is expected to see (to thin the frames)
    show: str  # one of SHOW
    options: dict = field(default_factory=dict)  # keyword arguments of the library function
    image: Tensor | None = None  # (C, S, S) in [-1, 1], for the edits; upscale: the low-res (C, s, s)
    mask: Tensor | None = None  # (S, S) bool, True = regenerate


COMMON = {"n", "seed", "label", "context", "guidance", "show", "prompt", "negative_prompt"}
MAX_PROMPT = 1000  # characters of a prompt (the encoder reads at most 256 tokens of it anyway)


def parse_generate(run: LoadedRun, body: dict) -> Job:
    _generates(run)
    _known(body, COMMON | {"sampler", "steps"})
    options = _sampler(run, body)
    conditioning, n, nrow = _conditioning(run, body, default_n=_default_n(run))
    total = steps_walked(options["sampler"], run_steps(run, options["sampler"], options["steps"]), run.schedule.T)
    job = Job("generate", n, nrow, total, _show(body), {**options, **conditioning, "seed": _seed(body)})
    return _bounded(job, run, REGISTRY[options["sampler"]].calls_per_step)


def parse_inpaint(run: LoadedRun, body: dict) -> Job:
    _generates(run)
    _known(body, COMMON | {"image", "mask", "method", "steps", "resample", "jump"})
    method = _text(body, "method") or "repaint"
    if method not in edit.METHODS:
        raise RequestError(f"unknown method {_shown(method)}; choose one of {', '.join(edit.METHODS)}")
    steps = _int(body, "steps", None, 1, min(MAX_STEPS, run.schedule.T)) or edit.DEFAULT_STEPS[method]
    options = {"method": method, "steps": steps}
    if method == "repaint":
        options["resample"] = _int(body, "resample", edit.DEFAULT_RESAMPLE, 1, MAX_RESAMPLE)
        options["jump"] = _int(body, "jump", edit.DEFAULT_JUMP, 1, steps)
    elif body.get("resample") is not None or body.get("jump") is not None:
        raise RequestError("resample and jump belong to the repaint method")
    total = edit.network_calls(edit.inpaint_moves(run.schedule.T, **options))
    conditioning, n, nrow = _conditioning(run, body, default_n=4)
    job = _bounded(Job("inpaint", n, nrow, total, _show(body), {**options, **conditioning, "seed": _seed(body)}), run)
    job.image, job.mask = decode_image(body.get("image"), run, "image"), decode_mask(body.get("mask"), run)
    return job


def parse_img2img(run: LoadedRun, body: dict) -> Job:
    _generates(run)
    _known(body, COMMON | {"image", "strength", "sampler", "steps"})
    options = _sampler(run, body)
    strength = _float(body, "strength", 0.6, 0.0, 1.0)
    conditioning, n, nrow = _conditioning(run, body, default_n=4)
    total = max(1, edit.sdedit_plan(run.schedule.T, strength, options["sampler"], options["steps"])[1])
    job = Job("img2img", n, nrow, total, _show(body), {**options, **conditioning, "strength": strength,
                                                        "seed": _seed(body)})
    job = _bounded(job, run, REGISTRY[options["sampler"]].calls_per_step)
    job.image = decode_image(body.get("image"), run, "image")
    return job


def parse_upscale(run: LoadedRun, body: dict) -> Job:
    """An upscale run's job: n results for one uploaded image, shrunk to the low-res size unless it
    has it already (edit.upscale.low_res_picture); the final grid shows it, bicubic, then the results."""
    _known(body, {"image", "n", "seed", "sampler", "steps", "aug", "show"})
    if run.task != "upscale":
        raise RequestError("this model generates images: it does not upscale (train one with --task upscale)")
    options = _sampler(run, body)
    n = _int(body, "n", 4, 1, MAX_N)
    options.update(aug=_float(body, "aug", DEFAULT_AUG, 0.0, 2.0), seed=_seed(body))
    total = steps_walked(options["sampler"], options["steps"], run.schedule.T)
    job = _bounded(Job("upscale", n, min(n + 2, 8), total, _show(body), options), run,
                   REGISTRY[options["sampler"]].calls_per_step)
    job.image = edit.low_res_picture(decode_upload(body.get("image"), "image"), run, exact=False)
    return job


def _generates(run: LoadedRun) -> None:
    """Refuse the jobs of a run that generates for an upscale run, whatever else the request holds."""
    if run.task == "upscale":
        raise RequestError(f"this model upscales by {run.factor}: it needs a low-resolution image "
                           "(POST /api/upscale), it does not generate from noise")


def _known(body: dict, names: set[str]) -> None:
    if not isinstance(body, dict):
        raise RequestError("the request must be a JSON object")
    unknown = sorted(set(body) - names)
    if unknown:
        shown = ", ".join(k if len(k) <= 20 else k[:17] + "..." for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise RequestError(f"unknown field(s) {shown}; known: {', '.join(sorted(names))}")


def _shown(value, limit: int = 40) -> str:
    """A value as the error message quotes it: short, whatever was sent."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bounded(job: Job, run: LoadedRun, calls_per_step: int = 1) -> Job:
    """Refuse a job whose network evaluations (images x steps x calls a step, twice where guidance runs
    both branches) would hold the only worker for long: more than MAX_WORK of them, or more than
    PAGE_SECONDS at the pace this run's network was timed at on this machine."""
    calls = job.total * calls_per_step * branches(run.net, job.options.get("cond"), job.options.get("guidance", 1.0))
    work = job.n * calls
    if work > MAX_WORK:
        raise RequestError(f"this asks for {job.n} images x {calls:,} network calls = {work:,}; "
                           f"at most {MAX_WORK:,} a request: fewer images or fewer steps")
    pace = getattr(run, "seconds_per_image_call", None)
    if isinstance(pace, float) and work * pace > PAGE_SECONDS:
        raise RequestError(f"this asks for {job.n} images x {calls:,} network calls, about {work * pace / 60:.0f} "
                           f"minutes on this machine; at most {PAGE_SECONDS // 60} a request: fewer images or steps")
    return job


def _sampler(run: LoadedRun, body: dict) -> dict:
    name = _text(body, "sampler") or run.sampler
    if name not in REGISTRY:
        raise RequestError(f"unknown sampler {_shown(name)}; choose one of {', '.join(REGISTRY)}")
    record = REGISTRY[name]
    steps = _int(body, "steps", None, 1, min(MAX_STEPS, run.schedule.T))
    if record.walks_every_step and steps not in (None, run.schedule.T):
        raise RequestError(f"{name} walks all {run.schedule.T} steps; choose another sampler for {steps} steps")
    return {"sampler": name, "steps": None if record.walks_every_step else steps}


def _conditioning(run: LoadedRun, body: dict, default_n: int) -> tuple[dict, int, int]:
    """What the images are told to draw (conditioning.resolve: the command line's rules), the image
    count and the grid's row length. label: "each" (or missing: each class in turn), "none"
    (unconditional), or a class name or id; a context takes the place of "each"."""
    n = _int(body, "n", default_n, 1, MAX_N)
    label, context = _text(body, "label"), _text(body, "context") or None
    guidance = body.get("guidance")
    if guidance is not None:
        guidance = _checked(GUIDANCE, guidance)
    try:
        asked = resolve(run, n, guidance=guidance, default="each", label=None if context and label == "each" else label,
                        context=context, prompt=_prompt(body, "prompt"), negative_prompt=_prompt(body, "negative_prompt"))
    except UsageError as e:
        raise RequestError(str(e)) from None
    return asked.options(), n, min(n, asked.per_row) if asked.per_row else max(1, math.ceil(math.sqrt(n)))


def _checked(limit: Limit, value):
    try:
        return limit.check(value)
    except UsageError as e:
        raise RequestError(str(e)) from None


def _text(body: dict, key: str) -> str | None:
    """A string field, or None when absent; numbers are accepted as text (a class id)."""
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RequestError(f"{key} must be text, got {type(value).__name__}")


def _prompt(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{key} must be text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT:
        raise RequestError(f"{key} is {len(value):,} characters; at most {MAX_PROMPT:,}")
    return value


def _default_n(run: LoadedRun) -> int:
    if getattr(run, "text", None) is not None:
        return 8
    return min(MAX_N, 2 * run.num_classes) if run.num_classes else 16


def _seed(body: dict) -> int:
    return _checked(SEED, body.get("seed", 0))


def _show(body: dict) -> str:
    show = body.get("show") or "x"
    if show not in SHOW:
        raise RequestError(f"show must be one of {', '.join(SHOW)}, got {_shown(show)}")
    return show


def _int(body: dict, key: str, default, lo: int, hi: int):
    value = body.get(key)
    if value is None:
        return default
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value == int(value))
    if isinstance(value, bool) or not whole:
        raise RequestError(f"{key} must be a whole number, got {_shown(value)}")
    if not lo <= value <= hi:
        raise RequestError(f"{key} must lie in [{lo}, {hi}], got {_shown(value)}")
    return int(value)


def _float(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{key} must be a number, got {_shown(value)}")
    if not lo <= value <= hi:
        raise RequestError(f"{key} must lie in [{lo:g}, {hi:g}], got {value:g}")
    return float(value)


def decode_upload(data_url, what: str) -> Image.Image:
    """A data URL (or bare base64) -> a decoded PIL image, by the decoder every path shares
    (data/decode.py: allowed formats only, by content), refusing big files and pictures."""
    if not isinstance(data_url, str) or not data_url:
        raise RequestError(f"no {what}: upload an image first")
    payload = data_url.split(",", 1)[1] if data_url.startswith("data:") else data_url
    if len(payload) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise RequestError(f"the {what} is over {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    try:
        img = decode_picture(base64.b64decode(payload, validate=True), what, max_side=MAX_SIDE)  # before decoding
    except DataError as e:
        raise RequestError(str(e)) from None
    except binascii.Error:
        raise RequestError(f"the {what} is not an image: its data is not valid base64") from None
    return img


def decode_image(data_url, run: LoadedRun, what: str) -> Tensor:
    """An uploaded image as the model sees it: (C, S, S) in [-1, 1], center-cropped and resized like
    the training data."""
    return image_tensor(decode_upload(data_url, what), run.image_size, run.channels)


def decode_mask(data_url, run: LoadedRun) -> Tensor:
    """The painted mask as (S, S) bool, True = regenerate, read by the same rule as the command
    line's --mask (edit/masks.py): alpha where there is one, else the brightness."""
    mask = edit.mask_from_picture(decode_upload(data_url, "mask"), run.image_size)
    if not mask.any():
        raise RequestError("the mask is empty: paint the part of the image to regenerate")
    return mask
