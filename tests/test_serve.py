"""`undiffuse serve`'s API through Starlette's TestClient: streamed frames then the final grid, seeds,
limits refused with a 4xx and a message, one job at a time in a queue, and the command's bad input."""
import asyncio
import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from undiffuse import edit  # noqa: E402
from undiffuse.errors import RequestError  # noqa: E402
from undiffuse.serve import jobs, requests  # noqa: E402
from undiffuse.generation import LoadedRun, load_run  # noqa: E402
from undiffuse.schedule import linear  # noqa: E402
from undiffuse.serve import make_app  # noqa: E402
from undiffuse.unet import UNet, UNetConfig  # noqa: E402
from undiffuse.viz import to_uint8  # noqa: E402

from cli_helpers import fails_cleanly  # noqa: E402


@pytest.fixture(scope="module")
def client(trained):  # conftest.py's tiny run: 16x16 digits, 10 classes
    app = make_app(load_run(trained), name="run")
    with TestClient(app) as c:
        c.app_state = app.state
        yield c


def events(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def png(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def data_url(img: Image.Image, fmt="PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def test_the_page_talks_to_its_own_server_only(client):
    page = client.get("/")
    assert page.status_code == 200 and "Generate" in page.text and "Inpaint" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no analytics
    info = client.get("/api/info").json()
    assert info["class_names"] == [str(k) for k in range(10)] and info["image_size"] == 16
    assert "ddim" in info["samplers"] and info["limits"]["n"] == 64
    assert (info["default_steps"]["ddim"], info["default_guidance"]) == (10, 2.0)  # the digits' recipe


def test_generate_streams_frames_then_the_final_grid(client):
    got = events(client.post("/api/generate", json={"n": 10, "steps": 20, "seed": 3, "label": "each"}))
    kinds = [e["type"] for e in got]
    assert kinds[0] == "start" and kinds[-1] == "image" and kinds.count("image") == 1
    frames = [e for e in got if e["type"] == "frame"]
    assert len(frames) == 20  # every step of a short walk
    assert [f["step"] for f in frames] == sorted({f["step"] for f in frames}) and frames[-1]["step"] == 20
    first = png(frames[0]["png"])
    assert first.size == (10 * 17 + 1, 17 + 1)  # one row of ten 16-pixel images, 1-pixel gaps
    final = got[-1]
    grid = png(final["png"])
    assert grid.size == (final["width"], final["height"]) == (10 * (64 + 2) + 2, 64 + 4)  # enlarged 4x
    assert (final["n"], final["nrow"], final["cell"]) == (10, 10, 64)


def test_the_same_seed_gives_the_same_image(client):
    body = {"n": 4, "steps": 5, "sampler": "dpmpp-2m", "label": "3", "guidance": 1.5, "show": "x0"}
    a, b, c = (events(client.post("/api/generate", json={**body, "seed": s}))[-1]["png"] for s in (7, 7, 8))
    assert a == b and a != c


def test_each_frame_shows_what_was_asked(client):
    body = {"n": 2, "steps": 4, "seed": 0, "label": "none"}
    noisy = [e["png"] for e in events(client.post("/api/generate", json={**body, "show": "x"})) if e["type"] == "frame"]
    clean = [e["png"] for e in events(client.post("/api/generate", json={**body, "show": "x0"})) if e["type"] == "frame"]
    assert len(noisy) == len(clean) == 4 and noisy[0] != clean[0]


@pytest.mark.parametrize("body, status, words", [
    ({"n": 65}, 400, "n must lie in [1, 64]"),
    ({"n": 0}, 400, "n must lie in [1, 64]"),
    ({"steps": 1001}, 400, "steps must lie in [1, 1000]"),
    ({"steps": 0}, 400, "steps must lie in [1, 1000]"),
    ({"steps": 2.5}, 400, "whole number"),
    ({"sampler": "plms"}, 400, "unknown sampler 'plms'"),
    ({"sampler": "ddpm", "steps": 50}, 400, "ddpm walks all 1000 steps"),
    ({"label": "10"}, 400, "out of range"),
    ({"label": "cat"}, 400, "unknown label 'cat'"),
    ({"label": "3", "context": "0.5*3+0.5*8"}, 400, "not both"),
    ({"context": "1,0"}, 400, "this model takes 10"),
    ({"guidance": 1e9}, 400, "guidance must lie in [0, 20]"),
    ({"guidance": "lots"}, 400, "guidance must be a number"),
    ({"seed": -1}, 400, "seed must lie in"),
    ({"show": "eps"}, 400, "show must be one of"),
    ({"n": 2, "width": 4096}, 400, "unknown field(s) width"),
])
def test_absurd_requests_are_refused_with_a_message(client, body, status, words):
    response = client.post("/api/generate", json=body)
    assert response.status_code == status and words in response.json()["error"]


def test_requests_that_are_not_json_objects_are_refused(client):
    assert client.post("/api/generate", content=b"n=4", headers={"content-type": "text/plain"}).status_code == 415
    response = client.post("/api/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    assert client.post("/api/generate", json=[1, 2]).status_code == 400
    big = b'{"n": "' + b"x" * (13 * 2**20) + b'"}'
    assert client.post("/api/generate", content=big, headers={"content-type": "application/json"}).status_code == 413


def test_an_unconditional_model_takes_no_guidance_or_label():
    net = UNet(UNetConfig(channels=1, base=8, mults=(1, 2), blocks=1, attention=())).eval()
    run = LoadedRun(net, linear(100), "eps", (), 8, 1, {})
    with TestClient(make_app(run)) as c:
        for body in ({"guidance": 2.0}, {"label": "3"}, {"context": "1"}):
            response = c.post("/api/generate", json={"n": 2, **body})
            assert response.status_code == 400 and "unconditional" in response.json()["error"]
        assert c.post("/api/generate", json={"steps": 101}).json()["error"] == "steps must lie in [1, 100], got 101"
        got = events(c.post("/api/generate", json={"n": 3, "sampler": "ddpm", "seed": 1}))
        assert got[-1]["type"] == "image" and got[-1]["nrow"] == 2  # three images: a 2 x 2 grid
        frames = [e["step"] for e in got if e["type"] == "frame"]
        assert 20 <= len(frames) <= 30 and frames[-1] == 100  # all T = 100 steps, thinned


@pytest.mark.parametrize("image, status, words", [
    (None, 400, "upload an image first"),
    ("data:image/png;base64,bm90IGFuIGltYWdl", 400, "not an image"),  # "not an image"
    ("data:image/png;base64,***", 400, "not an image"),
    ("big", 400, "at most 1024 a side"),
    ("huge", 413, "over 4 MB"),
])
def test_uploads_must_be_small_images(client, image, status, words):
    if image == "big":
        image = data_url(Image.new("L", (1100, 100)))
    elif image == "huge":
        image = "data:image/png;base64," + "A" * (6 * 2**20)
    response = client.post("/api/img2img", json={"image": image, "strength": 0.5})
    assert response.status_code == status and words in response.json()["error"], response.text


def test_the_mask_is_read_from_its_alpha_and_cropped_like_the_image(trained):
    run = load_run(trained)
    mask = Image.new("RGBA", (64, 32))
    mask.paste((255, 0, 0, 255), (16, 0, 32, 32))  # the left half of the centre square
    got = requests.decode_mask(data_url(mask), run)
    assert got.shape == (16, 16) and got[:, :8].all() and not got[:, 8:].any()
    with pytest.raises(RequestError, match="mask is empty"):
        requests.decode_mask(data_url(Image.new("RGBA", (32, 32))), run)


def _pattern(side=16) -> Image.Image:
    ramp = np.add.outer(np.arange(side), np.arange(side)) * (255 // (2 * side - 2))
    return Image.fromarray(ramp.astype(np.uint8))


def _cells(final: dict) -> np.ndarray:
    """The images of a final grid at the model's resolution, uint8 (n, S, S)."""
    grid, cell, pad, scale = np.asarray(png(final["png"])), final["cell"], final["pad"], final["cell"] // 16
    return np.stack([grid[pad + (i // final["nrow"]) * (cell + pad):][:cell:scale,
                          pad + (i % final["nrow"]) * (cell + pad):][:, :cell:scale] for i in range(final["n"])])


def _model_view(trained, img: Image.Image) -> np.ndarray:
    return to_uint8(requests.decode_image(data_url(img), load_run(trained), "image")[None])[0, ..., 0]


@pytest.mark.parametrize("method", ["replace", "repaint"])
def test_inpaint_streams_and_keeps_the_unmasked_pixels(client, trained, method):
    mask = Image.new("RGBA", (16, 16))
    mask.paste((255, 0, 0, 255), (0, 0, 8, 16))  # regenerate the left half
    body = {"image": data_url(_pattern()), "mask": data_url(mask), "method": method, "steps": 6, "n": 3, "seed": 1}
    walk = {"jump": 2, "resample": 3} if method == "repaint" else {}
    got = events(client.post("/api/inpaint", json={**body, **walk}))
    frames = [e for e in got if e["type"] == "frame"]
    assert got[0] == {"type": "start", "total": len(frames), "kind": "inpaint", "n": 3} and got[-1]["type"] == "image"
    calls = edit.network_calls(edit.inpaint_moves(1000, method, 6, **walk))
    assert len(frames) == calls == (6 if method == "replace" else 14)  # RePaint: 2 steps again, twice at each of 2 levels
    cells, known = _cells(got[-1]), _model_view(trained, _pattern())
    assert (cells[:, :, 8:] == known[:, 8:]).all()  # exactly the image where the mask is clear
    assert (cells[:, :, :8] != known[:, :8]).any()


def test_img2img_at_strength_0_returns_the_image_and_at_1_the_sample(client, trained):
    image = data_url(_pattern())
    kept = events(client.post("/api/img2img", json={"image": image, "strength": 0, "n": 2, "label": "none"}))
    assert (_cells(kept[-1]) == _model_view(trained, _pattern())).all()
    body = {"n": 2, "label": "4", "seed": 5, "steps": 6}
    fresh = events(client.post("/api/img2img", json={**body, "image": image, "strength": 1}))
    assert fresh[-1]["png"] == events(client.post("/api/generate", json=body))[-1]["png"]
    assert sum(e["type"] == "frame" for e in fresh) == 6


@pytest.mark.parametrize("body, words", [
    ({"method": "blend"}, "unknown method 'blend'"),
    ({"method": "replace", "resample": 3}, "belong to the repaint method"),
    ({"resample": 50}, "resample must lie in [1, 20]"),
    ({"mask": None}, "no mask"),
    ({"strength": 0.5}, "unknown field(s) strength"),
])
def test_bad_inpaint_requests_are_refused(client, body, words):
    mask = Image.new("L", (16, 16), 255)
    response = client.post("/api/inpaint", json={"image": data_url(_pattern()), "mask": data_url(mask), **body})
    assert response.status_code == 400 and words in response.json()["error"], response.text


def test_an_upscale_run_upscales_an_upload_and_nothing_else(sr_run, trained):
    from undiffuse.conditions.lowres import downsample
    from undiffuse.data import load_data

    run = load_run(sr_run)  # 8x8 -> 16x16
    digit = load_data("digits", image_size=16).images[:1]
    low = downsample(digit, 2)
    small = Image.fromarray(to_uint8(low)[0, ..., 0])
    with TestClient(make_app(run)) as c:
        info = c.get("/api/info").json()
        assert (info["task"], info["factor"], info["edit"]) == ("upscale", 2, None)
        got = events(c.post("/api/upscale", json={"image": data_url(small), "n": 3, "steps": 4, "seed": 2}))
        frames, final = [e for e in got if e["type"] == "frame"], got[-1]
        assert got[0]["kind"] == "upscale" and len(frames) == 4 and final["type"] == "image"
        assert (final["n"], final["nrow"], final["cell"]) == (5, 5, 64)  # low-res | bicubic | 3 results
        cells = _cells(final)
        seen = edit.low_res_picture(small, run)  # the upload as the model reads it (quantised to 8 bits)
        assert (seen - low[0]).abs().max() <= 1 / 255
        expected = edit.upscale(run, seen, n=3, sampler="ddim", steps=4, seed=2)
        assert (cells[2:] == to_uint8(expected)[..., 0]).all()  # what the library gives for the same request
        big = Image.fromarray(to_uint8(digit)[0, ..., 0]).resize((48, 48))  # any size: read as a full image, shrunk
        assert events(c.post("/api/upscale", json={"image": data_url(big), "n": 1, "steps": 2}))[-1]["n"] == 3
        for path in ("/api/generate", "/api/img2img"):
            response = c.post(path, json={"n": 2, "image": data_url(small)})
            assert response.status_code == 400 and "upscales by 2" in response.json()["error"]
        for body, words in [({"image": data_url(small), "aug": 3}, "aug must lie in [0, 2]"),
                            ({"image": data_url(small), "label": "3"}, "unknown field(s) label"), ({}, "upload an image first")]:
            response = c.post("/api/upscale", json=body)
            assert response.status_code == 400 and words in response.json()["error"], response.text
    with TestClient(make_app(load_run(trained))) as c:
        response = c.post("/api/upscale", json={"image": data_url(small)})
        assert response.status_code == 400 and "does not upscale" in response.json()["error"]


def test_one_job_at_a_time_and_the_second_waits_its_turn(client, monkeypatch):
    queue = client.app_state.queue
    real, lock = jobs.run_job, threading.Lock()
    active, peak, spans, first = [0], [0], {}, threading.Event()

    def counted(run, job, callback):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        start = time.monotonic()
        try:
            if not first.is_set():  # hold the first job until the second one is queued behind it
                first.set()
                deadline = time.monotonic() + 20
                while queue.pending < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
            return real(run, job, callback)
        finally:
            with lock:
                active[0] -= 1
            spans[job.options["seed"]] = (start, time.monotonic())

    monkeypatch.setattr(jobs, "run_job", counted)
    results = {}

    def request(seed):
        results[seed] = events(client.post("/api/generate", json={"n": 4, "steps": 10, "seed": seed}))

    threads = [threading.Thread(target=request, args=(seed,)) for seed in (1, 2)]
    threads[0].start()
    assert first.wait(20)
    threads[1].start()
    for t in threads:
        t.join(60)
    assert peak[0] == 1
    assert spans[2][0] >= spans[1][1]  # the second started after the first had finished
    assert {"type": "queue", "ahead": 1} in results[2] and results[2][-1]["type"] == "image"
    assert not any(e["type"] == "queue" for e in results[1]) and results[1][-1]["type"] == "image"
    assert queue.pending == 0


def test_a_job_whose_browser_went_away_stops(trained, monkeypatch):
    """Closing the event stream (what Starlette does when the client disconnects) cancels the job."""
    steps = []
    real = jobs.run_job

    def slow(run, job, callback):
        def count(state):
            steps.append(state["i"])
            time.sleep(0.02)
            callback(state)
        return real(run, job, count)

    monkeypatch.setattr(jobs, "run_job", slow)
    run = load_run(trained)
    queue = jobs.JobQueue(run)

    async def watch_two_frames():
        stream = queue.stream(requests.parse_generate(run, {"n": 2, "sampler": "ddpm"}))
        async for event in stream:
            if event["type"] == "frame" and event["frame"] == 2:
                break
        await stream.aclose()
        deadline = time.monotonic() + 20
        while queue.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    asyncio.run(watch_two_frames())
    queue.close()
    assert queue.pending == 0 and len(steps) < 200  # of ddpm's 1000


def test_serve_refuses_a_bad_run_folder_and_a_busy_port(trained, tmp_path, capsys):
    err = fails_cleanly(capsys, ["serve", tmp_path / "missing"])
    assert "missing" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = fails_cleanly(capsys, ["serve", trained, "--port", port])
    assert f"127.0.0.1:{port}" in err and "--port" in err
    assert "--port must lie" in fails_cleanly(capsys, ["serve", trained, "--port", 70000])


def test_a_bug_in_a_job_logs_its_traceback_and_bad_input_does_not(trained, monkeypatch, capsys):
    """A bug is not bad input: the page gets a short message, the server's log the whole traceback."""
    from undiffuse.errors import UsageError
    from undiffuse.serve import jobs, requests

    run = load_run(trained)
    queue = jobs.JobQueue(run)

    def stream_of(error):
        def fail(*args):
            raise error
        monkeypatch.setattr(jobs, "run_job", fail)

        async def collect():
            return [e async for e in queue.stream(requests.parse_generate(run, {"n": 2, "steps": 2}))]
        return asyncio.run(collect())

    capsys.readouterr()
    got = stream_of(ZeroDivisionError("a bug"))
    err = capsys.readouterr().err
    assert got[-1]["type"] == "error" and "internal error (ZeroDivisionError: a bug)" in got[-1]["message"]
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: a bug" in err
    got = stream_of(UsageError("a value out of range"))
    assert got[-1] == {"type": "error", "message": "a value out of range"}
    assert "Traceback" not in capsys.readouterr().err
    queue.close()


def test_the_work_bound_counts_both_branches_of_guidance_and_the_machines_pace(trained):
    """64 images of 1,000 guided DDIM steps are 128,000 network calls, not 64,000; and on a machine where
    a call takes a second per image, 640 calls are over the page's minutes."""
    from undiffuse.serve import requests

    run = load_run(trained)
    assert run.seconds_per_image_call > 0
    with pytest.raises(RequestError, match="64 images x 2,000 network calls = 128,000"):
        requests.parse_generate(run, {"n": 64, "steps": 1000, "label": "3"})
    requests.parse_generate(run, {"n": 64, "steps": 1000, "label": "none"})  # one branch: within the bound
    run._pace = 1.0  # the pace of a slow machine, as if timed there
    with pytest.raises(RequestError, match="about 21 minutes on this machine; at most 5"):
        requests.parse_generate(run, {"n": 64, "steps": 10, "label": "3"})
