"""One image decoder for every path: an allow-list of raster formats chosen by content, the same
decompression-bomb limit everywhere, and no blow-up from extreme aspect ratios."""
import base64
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from undiffuse.data import load_data, load_image
from undiffuse.data.decode import FORMATS, MAX_PIXELS, decode_picture, image_tensor
from undiffuse.errors import DataError

from cli_helpers import fails_cleanly

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n"


def test_postscript_named_png_is_refused_by_its_content_before_any_plugin_runs(tmp_path):
    path = tmp_path / "sketch.png"
    path.write_bytes(POSTSCRIPT)
    with Image.open(path) as unrestricted:  # what Pillow alone would do: hand it to the EPS plugin
        assert unrestricted.format == "EPS"
    with pytest.raises(DataError, match="allowed format"):
        load_image(path)
    (tmp_path / "data").mkdir()
    path.rename(tmp_path / "data" / "sketch.png")
    Image.new("L", (8, 8), 200).save(tmp_path / "data" / "ok.png")
    data = load_data(str(tmp_path / "data"))
    assert len(data.images) == 1 and data.skipped == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_allowed_format_decodes_whatever_its_name(fmt, tmp_path):
    path = tmp_path / "picture.bin"  # the name says nothing; the content decides
    Image.new("RGB", (12, 10), (250, 0, 0)).save(path, format=fmt)
    image = load_image(path, 8)
    assert image.shape == (3, 8, 8) and image[0].mean() > 0.8


def test_a_decompression_bomb_is_refused_by_every_loader_alike(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 64  # a few kB on disk, over the limit once decoded
    (tmp_path / "data").mkdir()
    bomb = tmp_path / "data" / "bomb.png"
    Image.new("1", (side, side)).save(bomb)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(bomb)
    Image.new("L", (8, 8)).save(tmp_path / "data" / "ok.png")
    assert load_data(str(tmp_path / "data")).skipped == 1  # the folder loader skips it: the same rule


def test_a_strip_is_refused_and_a_wide_picture_cropped_to_its_center(tmp_path):
    Image.new("L", (20_000, 1), 255).save(tmp_path / "line.png")
    with pytest.raises(DataError, match="a strip, not a picture"):
        load_image(tmp_path / "line.png")  # its center square is one pixel
    Image.new("L", (16 * 8, 8), 255).save(tmp_path / "wide.png")
    assert load_image(tmp_path / "wide.png", 64).shape == (1, 64, 64)  # 16:1 is still a picture


def test_decode_picture_reads_bytes_and_refuses_damaged_ones():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    assert decode_picture(buf.getvalue()).size == (64, 64)
    with pytest.raises(DataError, match="cannot be read"):
        decode_picture(buf.getvalue()[:len(buf.getvalue()) // 2])  # the header survives, the pixels do not


def test_noise_refuses_postscript_in_one_line(tmp_path, capsys):
    path = tmp_path / "x.png"
    path.write_bytes(POSTSCRIPT)
    assert "allowed format" in fails_cleanly(capsys, ["noise", path, "--out", tmp_path / "s.png"])


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("F", "TIFF"), ("I;16", "PNG"), ("P", "GIF")])
def test_the_web_page_takes_any_allowed_picture(mode, fmt, trained):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from undiffuse.generation import load_run
    from undiffuse.serve import make_app

    picture = Image.fromarray(np.linspace(0, 1 if mode == "F" else 200, 256).reshape(16, 16).astype(
        np.float32 if mode == "F" else np.uint8)).convert(mode)
    buf = io.BytesIO()
    picture.save(buf, format=fmt)
    url = f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
    with TestClient(make_app(load_run(trained))) as client:
        response = client.post("/api/img2img", json={"image": url, "strength": 0.5, "steps": 2, "n": 1})
    assert response.status_code == 200, response.text
    assert '"type": "image"' in response.text


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in FORMATS}


@settings(max_examples=400, deadline=None)
@given(fmt=st.sampled_from(FORMATS), cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 63),
                                                                                     st.integers(0, 255)), max_size=4))
def test_fuzzed_image_headers_decode_or_fail_in_one_line(fmt, cut, flips):
    data = bytearray(ENCODED[fmt][:len(ENCODED[fmt]) - cut] if cut < len(ENCODED[fmt]) else b"")
    for at, value in flips:  # corrupt the header, where sizes and modes live
        if at < len(data):
            data[at] = value
    try:
        picture = decode_picture(bytes(data))
    except DataError as e:
        assert len(str(e)) < 300 and "\n" not in str(e)
    else:
        assert picture.width * picture.height <= MAX_PIXELS
        image_tensor(picture, 8)  # what is decoded converts
