"""`undiffuse serve` in a real headless browser: Debian's chromium driven by Playwright against the
command running in a subprocess. Generate and watch the frames arrive, see a refused request's
message, wait in the queue behind another tab, download the PNG, paint a mask by mouse and inpaint,
img2img. A screenshot lands in test-artifacts/serve.png for a person to look at.

Without chromium or Playwright this skips, except under CI (the CI variable set), where it fails:
.ci/run installs chromium. Playwright never downloads a browser here; it drives /usr/bin/chromium.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--metrics-recording-only"]


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs chromium)")
    pytest.skip(reason)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    _missing("no chromium on this machine (apt-get install chromium)")


def _serve(run, log_dir):
    """`undiffuse serve RUN` on a free port, as a user starts it; yields its URL."""
    log = open(log_dir / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "undiffuse", "serve", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, f"no URL in {line!r}; stderr: {log.seek(0) or log.read()}"
        yield url.group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):  # conftest.py's tiny class-conditional run
    yield from _serve(trained, tmp_path_factory.mktemp("log"))


@pytest.fixture(scope="module")
def sr_server(sr_run, tmp_path_factory):  # conftest.py's tiny upscale run, 8x8 -> 16x16
    yield from _serve(sr_run, tmp_path_factory.mktemp("log"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install playwright; no `playwright install` needed)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_FLAGS, accept_downloads=True, viewport={"width": 1280, "height": 940})
        context.set_default_timeout(60_000)
        yield context
        context.close()


def _open(browser, url):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("() => window.undiffuse && window.undiffuse.info !== null")
    return page


def _finals(page, count):
    page.wait_for_function(f"() => window.undiffuse.finals >= {count} && !window.undiffuse.busy")


def test_generate_watch_download(server, browser, tmp_path):
    page = _open(browser, server)
    assert "16×16 grayscale, 10 classes" in page.inner_text("#model")
    page.fill("#n", "20")
    page.select_option("#sampler", "ddim")
    page.fill("#steps", "25")
    page.click("#generate")
    _finals(page, 1)
    state = page.evaluate("({frames: window.undiffuse.frames, final: window.undiffuse.final})")
    assert state["frames"] == 25  # every step arrived as a frame before the final grid
    assert state["final"]["kind"] == "generate" and state["final"]["n"] == 20
    assert "25 frames" in page.inner_text("#frame-count") and "done" in page.inner_text("#status")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.endswith("-generate-seed0.png")
    with Image.open(saved) as img:
        assert img.format == "PNG" and img.size == (state["final"]["width"], state["final"]["height"]) == (662, 134)
    page.close()


def test_a_refused_request_shows_its_message(server, browser):
    page = _open(browser, server)
    page.fill("#n", "500")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "n must lie in [1, 64]" in page.inner_text("#error")
    assert page.evaluate("window.undiffuse.finals") == 0
    page.close()


def test_a_second_tab_waits_in_the_queue(server, browser):
    first, second = _open(browser, server), _open(browser, server)
    first.fill("#n", "4")
    first.select_option("#sampler", "ddpm")  # 1000 steps: long enough to queue behind
    first.click("#generate")
    first.wait_for_function("() => window.undiffuse.frames >= 1")
    second.fill("#n", "2")
    second.fill("#steps", "5")
    second.click("#generate")
    second.wait_for_function("() => document.getElementById('status').textContent === 'waiting, 1 ahead'")
    first.click("#stop")  # the first tab gives up: its job stops, the second one runs
    _finals(second, 1)
    assert "stopped" in first.inner_text("#status") and first.evaluate("window.undiffuse.finals") == 0
    first.close()
    second.close()


def test_paint_a_mask_and_inpaint_then_img2img(server, browser, tmp_path):
    page = _open(browser, server)
    digit = np.zeros((64, 48), np.uint8)
    digit[8:56, 18:30] = 255  # a "1", taller than wide: the page center-crops it like the server
    path = tmp_path / "one.png"
    Image.fromarray(digit).save(path)
    page.set_input_files("#upload", str(path))
    page.wait_for_selector("#stage-hint", state="hidden")

    box = page.locator("#edit-mask").bounding_box()
    page.mouse.move(box["x"] + 40, box["y"] + 60)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(box["x"] + 40 + 17 * k, box["y"] + 60 + 12 * k)
    page.mouse.up()
    painted = page.evaluate("""() => {
        const a = document.getElementById('edit-mask').getContext('2d').getImageData(0, 0, 256, 256).data;
        let n = 0; for (let i = 3; i < a.length; i += 4) n += a[i] > 0; return n; }""")
    assert 3000 < painted < 30000  # a diagonal stroke 28 px wide

    page.fill("#n", "4")
    page.select_option("#method", "replace")
    page.fill("#edit-steps", "10")
    frames = page.evaluate("window.undiffuse.frames")
    page.click("#inpaint")
    _finals(page, 1)
    final = page.evaluate("window.undiffuse.final")
    assert final["kind"] == "inpaint" and final["n"] == 4 and page.evaluate("window.undiffuse.frames") - frames == 10
    assert page.is_hidden("#error")

    page.click("#img2img")
    _finals(page, 2)
    assert page.evaluate("window.undiffuse.final.kind") == "img2img" and page.is_hidden("#error")
    page.screenshot(path=str(ARTIFACTS / "serve-edit.png"), full_page=True)
    page.close()


def test_the_page_makes_no_request_to_another_host(server, browser):
    page = browser.new_page()
    hosts = []
    page.on("request", lambda request: hosts.append(request.url.split("/")[2]))
    page.goto(server)
    page.wait_for_function("() => window.undiffuse && window.undiffuse.info !== null")
    page.click("#generate")
    _finals(page, 1)
    time.sleep(0.2)
    own = server.split("/")[2]
    assert hosts and all(h == own for h in hosts if h), hosts
    page.close()


def test_an_upscale_run_gets_an_upscale_form(sr_server, browser, tmp_path):
    page = _open(browser, sr_server)
    assert "upscales 8×8 images 2×" in page.inner_text("#model")
    assert page.is_hidden("#edit-card") and page.is_hidden("#label") and page.inner_text("#generate") == "Upscale"
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "upload the image to upscale first" in page.inner_text("#error")
    digit = np.zeros((16, 16), np.uint8)
    digit[3:13, 7:10] = 255  # a "1" at full size: the server shrinks it to 8x8 as training did
    Image.fromarray(digit).save(tmp_path / "one.png")
    page.set_input_files("#low-upload", str(tmp_path / "one.png"))
    page.wait_for_function("() => window.undiffuse.lowImage !== null")
    page.fill("#steps", "6")
    page.click("#generate")
    _finals(page, 1)
    final = page.evaluate("window.undiffuse.final")
    assert final["kind"] == "upscale" and final["n"] == 4 + 2 and page.is_hidden("#error")  # low-res, bicubic, 4 results
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-upscale.png"), full_page=True)
    page.close()
