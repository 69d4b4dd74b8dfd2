"""Running the web page's jobs: one at a time on one worker thread, each streaming its events."""
from __future__ import annotations

import asyncio
import base64
import io
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Awaitable, Callable

import torch
from PIL import Image
from torch import Tensor

from .. import edit
from ..errors import UndiffuseError
from ..generation import LoadedRun, generate
from ..viz import MIN_CELL, image_grid, keep_frames
from .requests import FRAMES, Job


class Cancelled(Exception):
    """The browser went away: the job stops at its next step."""


def run_job(run: LoadedRun, job: Job, callback: Callable[[dict], None]) -> Tensor:
    """The images of one job's final grid, (N, C, H, W) in [-1, 1]; the callback sees every sampler step."""
    if job.kind == "generate":
        return generate(run, job.n, callback=callback, **job.options)
    if job.kind == "inpaint":
        return edit.inpaint(run, job.image, job.mask, n=job.n, callback=callback, **job.options)
    elif job.kind == "img2img":
        return edit.img2img(run, job.image, n=job.n, callback=callback, **job.options)
    elif job.kind == "upscale":
        results = edit.upscale(run, job.image, n=job.n, callback=callback, **job.options)
        return edit.comparison(job.image, results, run.factor)
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")


def png_data_url(img: Image.Image, compress_level: int = 6) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Frames:
    """The sampler callback of one job: a small PNG of the grid at about FRAMES of its steps."""

    def __init__(self, job: Job, emit, cancel: threading.Event):
        self.job, self.emit, self.cancel = job, emit, cancel
        self.keep = set(range(job.total)) if job.total <= FRAMES else keep_frames(job.total, FRAMES)
        self.stride = max(1, job.total // FRAMES)  # past the expected count (RePaint's walk), keep evenly
        self.step = self.sent = 0

    def __call__(self, state: dict) -> None:
        if self.cancel.is_set():
            raise Cancelled
        step, self.step = self.step, self.step + 1
        if step not in self.keep and not (step >= self.job.total and step % self.stride == 0):
            return
        x = state[self.job.show].detach().float().clamp(-1, 1).cpu()
        self.sent += 1
        self.emit({"type": "frame", "frame": self.sent, "step": step + 1, "total": max(self.job.total, step + 1),
                   "png": png_data_url(image_grid(x, self.job.nrow, pad=1, scale=1), compress_level=1)})


def final_event(images: Tensor, job: Job, seconds: float) -> dict:
    size = images.shape[-1]
    scale = max(1, -(-MIN_CELL // size))
    grid = image_grid(images, job.nrow, pad=2, scale=scale)
    return {"type": "image", "png": png_data_url(grid), "width": grid.width, "height": grid.height,
            "n": len(images), "nrow": job.nrow, "cell": size * scale, "pad": 2, "seconds": round(seconds, 2)}


class JobQueue:
    """One job at a time on one worker thread, first come, first served, for one model."""

    def __init__(self, run: LoadedRun):
        self.run = run
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="undiffuse-job")
        self._lock = threading.Lock()
        self._tickets = 0
        self._queued: list[int] = []  # tickets of the jobs not yet finished, oldest (running) first
        self._cancels: dict[int, threading.Event] = {}

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        with self._lock:
            return len(self._queued)

    def _ahead(self, ticket: int) -> int:
        with self._lock:
            return self._queued.index(ticket) if ticket in self._queued else 0

    async def stream(self, job: Job, gone: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[dict]:
        """The events of `job`, from waiting in the queue to the final image. Closing the iterator,
        or `gone()` turning true (polled a few times a second: the browser went away), cancels the job
        at its next step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        with self._lock:
            self._tickets += 1
            ticket = self._tickets
            self._queued.append(ticket)
            self._cancels[ticket] = cancel

        def emit(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone
                cancel.set()

        loop.run_in_executor(self._executor, self._work, job, ticket, emit, cancel)
        try:
            shown, started = None, False
            while True:
                if not started and (ahead := self._ahead(ticket)) != shown and ahead:
                    shown = ahead
                    yield {"type": "queue", "ahead": ahead}
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    if gone is not None and await gone():
                        return
                    continue
                if event is None:
                    return
                started = started or event["type"] == "start"
                yield event
        finally:
            cancel.set()

    def _work(self, job: Job, ticket: int, emit, cancel: threading.Event) -> None:
        try:
            if cancel.is_set():
                return
            emit({"type": "start", "total": job.total, "kind": job.kind, "n": job.n})
            start = time.perf_counter()
            with torch.inference_mode():
                images = run_job(self.run, job, _Frames(job, emit, cancel))
            emit(final_event(images, job, time.perf_counter() - start))
        except Cancelled:
            pass
        except UndiffuseError as e:  # what the request asked cannot be done: the page says why
            emit({"type": "error", "message": " ".join(str(e).split()) or type(e).__name__})
        except Exception as e:  # noqa: BLE001 - a bug: its traceback goes to the log, and the server keeps serving
            print(f"undiffuse serve: a {job.kind} job failed with a bug:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            emit({"type": "error", "message": f"internal error ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                                              "the server's log has its traceback"})
        finally:
            with self._lock:
                self._queued.remove(ticket)
                self._cancels.pop(ticket, None)
            emit(None)

    def close(self) -> None:
        """Cancel every job and let the worker go."""
        with self._lock:
            for cancel in self._cancels.values():
                cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
