"""`undiffuse serve RUN`: a local web page to sample a run and watch the image emerge from noise,
and to inpaint or transform (img2img) an uploaded image; for an upscale run, to upscale one.

A small Starlette app served by uvicorn: one HTML page (assets/serve.html: inline script and style,
nothing fetched from elsewhere; its Content-Security-Policy lets it talk to this server only) and
a JSON API whose answers stream as newline-delimited JSON events (jobs.py; requests.py checks them):

    GET  /                the page
    GET  /api/info        the run: size, channels, class names, samplers, defaults, limits
    POST /api/generate    {sampler, steps, seed, n, label | context, guidance, show}
    POST /api/inpaint     {image, mask, method, steps, resample, jump, seed, n, label | context, guidance, show}
    POST /api/img2img     {image, strength, sampler, steps, seed, n, label | context, guidance, show}
    POST /api/upscale     {image, aug, sampler, steps, seed, n, show}   (an upscale run's only job)

A bad request gets a 4xx status and {"error": message} before any work. Jobs run one at a time on
one worker thread with the EMA weights in inference mode, so a second tab waits ("queue" events).
The server binds 127.0.0.1 unless --host says otherwise, and then answers only to local host names
(a web page elsewhere cannot reach it through DNS rebinding). starlette and uvicorn are imported
only when the command runs.
"""
from __future__ import annotations

import json
import math
from importlib import resources

from .. import edit
from ..conditions.lowres import DEFAULT_AUG
from ..errors import RequestError
from ..samplers import DEFAULT_STEPS, SAMPLERS
from .jobs import JobQueue
from ..limits import PAGE_SECONDS
from .requests import (FRAMES, MAX_GUIDANCE, MAX_N, MAX_PROMPT, MAX_SIDE, MAX_STEPS, MAX_UPLOAD_BYTES, MAX_WORK,
                       parse_generate, parse_img2img, parse_inpaint, parse_upscale)


MAX_BODY_BYTES = 3 * MAX_UPLOAD_BYTES  # an image and a mask as base64, and the form


LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def describe(run, name: str) -> dict:
    """What the page needs to build its form."""
    edits = {"methods": list(edit.METHODS), "steps": edit.DEFAULT_STEPS, "resample": edit.DEFAULT_RESAMPLE,
             "jump": edit.DEFAULT_JUMP}
    return {
        "name": name, "image_size": run.image_size, "channels": run.channels, "class_names": list(run.class_names),
        "T": run.schedule.T, "samplers": list(SAMPLERS), "default_sampler": run.sampler,
        "default_steps": {**DEFAULT_STEPS, run.sampler: min(run.sample_steps or DEFAULT_STEPS[run.sampler], run.schedule.T),
                          "ddpm": run.schedule.T}, "default_guidance": run.guidance,
        "task": run.task, "factor": run.factor, "default_aug": DEFAULT_AUG,
        "edit": edits if run.task == "generate" else None, "frames": FRAMES,
        "text": ({"encoder": run.text.encoder, "max_tokens": run.text.max_tokens, "max_prompt": MAX_PROMPT}
                 if getattr(run, "text", None) is not None else None),
        "limits": {"n": MAX_N, "steps": min(MAX_STEPS, run.schedule.T), "guidance": MAX_GUIDANCE,
                   "upload_bytes": MAX_UPLOAD_BYTES, "side": MAX_SIDE, "work": MAX_WORK, "seconds": PAGE_SECONDS},
    }


def make_app(run, name: str = "run", allowed_hosts: list[str] | None = None):
    """The Starlette app serving one loaded run. allowed_hosts: the Host headers answered (None: any)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    queue = JobQueue(run)
    page = (resources.files("undiffuse") / "assets" / "serve.html").read_text(encoding="utf-8")
    info = describe(run, name)

    async def index(request):
        return HTMLResponse(page, headers=PAGE_HEADERS)

    async def api_info(request):
        return JSONResponse(info)

    def job_endpoint(parse):
        async def endpoint(request):
            try:
                job = parse(run, await _read_json(request))
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            return StreamingResponse(_lines(queue.stream(job, request.is_disconnected)),
                                     media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})
        return endpoint

    routes = [Route("/", index), Route("/api/info", api_info),
              Route("/api/generate", job_endpoint(parse_generate), methods=["POST"]),
              Route("/api/inpaint", job_endpoint(parse_inpaint), methods=["POST"]),
              Route("/api/img2img", job_endpoint(parse_img2img), methods=["POST"]),
              Route("/api/upscale", job_endpoint(parse_upscale), methods=["POST"])]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware)
    app.state.queue = queue
    return app


async def _lines(events):
    """One JSON object a line; the events end (and their job stops) when the response does."""
    try:
        async for event in events:
            yield json.dumps(event) + "\n"
    finally:
        await events.aclose()


async def _read_json(request) -> dict:
    """The request's JSON object, refusing other content types (a cross-site form cannot send JSON
    without the browser asking first) and bodies over MAX_BODY_BYTES."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise RequestError("send the request as application/json", 415)
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        raise RequestError(f"the request is over {MAX_BODY_BYTES // 2**20} MB", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(f"the request is over {MAX_BODY_BYTES // 2**20} MB", 413)
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise RequestError("the request is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        reason = str(e) if isinstance(e, RequestError) else "not valid JSON"
        raise RequestError(f"the request is {reason}") from None
    if not isinstance(value, dict):
        raise RequestError("the request must be a JSON object")
    return value


def _no_constant(name: str):
    raise RequestError(f"not valid JSON: {name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"not valid JSON: {text[:20]} is too large a number")
    return value
