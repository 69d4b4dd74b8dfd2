"""Loading specs into ImageData, and the mini-batch iterator. All inputs are built in tmp_path."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.data import DataError, ImageData, batch_at, load_data


def unit(value: float, top: float = 255) -> float:
    """A pixel value as the model sees it, in [-1, 1]."""
    return value / top * 2 - 1


def save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def noise_png(path: Path, seed: int, size: int = 48) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return save(Image.fromarray(pixels), path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# --- bundled sets ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist() -> ImageData:
    return load_data("mnist")


def test_mnist_shape_labels_and_range(mnist):
    assert mnist.images.shape == (5000, 1, 28, 28) and mnist.images.dtype == torch.float32
    assert (mnist.channels, mnist.image_size, mnist.num_classes) == (1, 28, 10)
    assert mnist.class_names == tuple("0123456789")
    assert mnist.labels.dtype == torch.int64
    assert torch.bincount(mnist.labels).tolist() == [500] * 10
    assert mnist.images.min() == -1 and mnist.images.max() == 1
    # Mostly background: the label column must not have been read as a pixel.
    assert (mnist.images == -1).float().mean() > 0.7
    assert mnist.source == "mnist" and mnist.skipped == 0


def _raw_digits() -> np.ndarray:
    root = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
    with gzip.open(root / "datasets" / "data" / "digits.csv.gz", "rt") as f:
        return np.loadtxt(f, delimiter=",")


def test_digits_default_size_keeps_labels_and_brightness():
    data = load_data("digits")
    raw = _raw_digits()
    assert data.images.shape == (1797, 1, 32, 32)
    assert data.labels.tolist() == raw[:, -1].astype(int).tolist()
    assert data.class_names == tuple("0123456789")
    assert -1 <= data.images.min() and data.images.max() <= 1
    # Upscaling preserves each image's mean brightness (values 0..16 mapped to [-1, 1]).
    expected = torch.tensor(raw[:5, :-1].mean(1) / 16 * 2 - 1, dtype=torch.float32)
    assert torch.allclose(data.images[:5].mean((1, 2, 3)), expected, atol=0.03)


def test_digits_at_native_size_are_the_raw_pixels():
    raw = _raw_digits()
    data = load_data("digits", image_size=8)
    expected = torch.tensor(raw[:, :-1] / 16 * 2 - 1, dtype=torch.float32).view(-1, 1, 8, 8)
    assert torch.allclose(data.images, expected, atol=1e-6)


def test_digits_at_requested_size():
    data = load_data("digits", image_size=16, channels=3)
    assert data.images.shape == (1797, 3, 16, 16)
    assert torch.equal(data.images[:, 0], data.images[:, 2])


# --- folders --------------------------------------------------------------------------------------

@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """cats/ and dogs/ holding PNG and JPEG files of mixed sizes and modes."""
    root = tmp_path / "pets"
    save(Image.new("L", (20, 20), 51), root / "cats" / "a.png")
    save(Image.new("RGB", (30, 24), (200, 10, 10)), root / "cats" / "b.jpg")
    save(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), root / "cats" / "c.png")  # fully transparent
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # entry 1 is pure red
    save(palette, root / "dogs" / "d.png")
    save(Image.fromarray(np.full((24, 24), 13107, dtype=np.uint16)), root / "dogs" / "e.png")  # 16-bit
    return root


def test_class_folder_labels_channels_and_values(class_folder):
    assert Image.open(class_folder / "dogs" / "e.png").mode.startswith("I")
    data = load_data(str(class_folder), image_size=16)
    assert data.class_names == ("cats", "dogs")
    assert data.labels.tolist() == [0, 0, 0, 1, 1]  # sorted: a, b, c | d, e
    assert data.images.shape == (5, 3, 16, 16) and data.skipped == 0
    a, b, c, d, e = data.images
    assert torch.allclose(a, torch.full_like(a, unit(51)))  # gray repeated over 3 channels
    assert b[0].mean() > 0.4 and b[1].mean() < -0.8  # JPEG red stays red, channels in RGB order
    assert torch.equal(c, torch.ones_like(c))  # transparent composited on white
    assert torch.allclose(d[:, 5, 5], torch.tensor([1.0, -1, -1]))  # palette looked up
    assert torch.allclose(e, torch.full_like(e, unit(13107, 65535)), atol=1e-5)  # scaled by 65535


def test_class_folder_inferred_size_and_forced_gray(class_folder):
    assert load_data(str(class_folder)).image_size == 64  # mixed sizes -> 64
    gray = load_data(str(class_folder), image_size=16, channels=1)
    assert gray.images.shape == (5, 1, 16, 16)
    assert gray.images[3, 0, 5, 5].item() == pytest.approx(unit(0.299, 1), abs=1e-3)  # red -> ITU-R 601 luma


def test_flat_grayscale_folder_is_unlabelled_one_channel(tmp_path):
    for i, value in enumerate((0, 128, 255)):
        save(Image.new("L", (12, 12), value), tmp_path / "flat" / f"{i}.png")
    data = load_data(str(tmp_path / "flat"))
    assert data.labels is None and data.class_names == () and data.num_classes == 0
    assert data.images.shape == (3, 1, 12, 12)  # shared square size kept
    assert data.images[:, 0, 0, 0].tolist() == pytest.approx([-1, unit(128), 1], abs=1e-6)


@pytest.mark.parametrize("layout", [("a/x.png", "b/y.png", "z.png"), ("only/x.png", "only/y.png")])
def test_folder_without_two_class_folders_is_unlabelled(tmp_path, layout):
    for name in layout:
        save(Image.new("L", (8, 8)), tmp_path / "root" / name)
    data = load_data(str(tmp_path / "root"))
    assert data.labels is None and data.class_names == () and len(data.images) == len(layout)


def test_non_square_images_are_center_cropped(tmp_path):
    pixels = np.zeros((10, 20), dtype=np.uint8)
    pixels[:, 5:15] = 255  # only the central square is white
    save(Image.fromarray(pixels), tmp_path / "wide" / "x.png")
    data = load_data(str(tmp_path / "wide"), image_size=10)
    assert torch.equal(data.images, torch.ones(1, 1, 10, 10))


def test_corrupt_file_is_skipped_and_labels_stay_aligned(tmp_path):
    root = tmp_path / "mixed"
    noise_png(root / "a" / "good.png", 0)
    truncate(noise_png(root / "a" / "zbad.png", 1))
    noise_png(root / "b" / "one.png", 2)
    save(Image.new("RGB", (48, 48), (0, 0, 255)), root / "b" / "two.png")
    data = load_data(str(root))
    assert data.skipped == 1 and len(data.images) == 3
    assert data.labels.tolist() == [0, 1, 1]
    assert data.images[2, 2].min() == 1  # b/two.png, blue, is last


def test_folder_of_only_corrupt_files_fails(tmp_path):
    truncate(noise_png(tmp_path / "bad" / "x.png", 0))
    (tmp_path / "bad" / "y.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="none of its 2 image files could be read"):
        load_data(str(tmp_path / "bad"))


def test_empty_folder_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"holds no images \(looked for .png"):
        load_data(str(tmp_path / "empty"))


def test_missing_path_and_other_files_fail(tmp_path):
    with pytest.raises(DataError, match="no such file or folder; a spec is 'mnist'"):
        load_data(str(tmp_path / "nope"))
    (tmp_path / "a.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="a.csv': not a .npy array or a folder; a spec is"):
        load_data(str(tmp_path / "a.csv"))


@pytest.mark.parametrize("kwargs", [{"image_size": 4}, {"image_size": 2048}, {"channels": 2}])
def test_bad_options_fail(kwargs):
    with pytest.raises(DataError):
        load_data("digits", **kwargs)


# --- .npy arrays ----------------------------------------------------------------------------------

def _rgb_stack() -> np.ndarray:
    """(N, H, W, C) uint8 with one known pixel."""
    array = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    array[1, 2, 5] = (10, 128, 255)
    return array


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npy_color_layouts(tmp_path, layout):
    array = _rgb_stack() if layout == "NHWC" else _rgb_stack().transpose(0, 3, 1, 2)
    np.save(tmp_path / "x.npy", np.ascontiguousarray(array))
    data = load_data(str(tmp_path / "x.npy"))
    assert data.images.shape == (2, 3, 8, 8) and data.labels is None
    assert data.images[1, :, 2, 5].tolist() == pytest.approx([unit(10), unit(128), unit(255)], abs=1e-6)
    assert data.images[1, :, 5, 2].tolist() == [-1, -1, -1]


def test_npy_grayscale_layout(tmp_path):
    np.save(tmp_path / "x.npy", _rgb_stack()[..., 1])
    data = load_data(str(tmp_path / "x.npy"))
    assert data.images.shape == (2, 1, 8, 8)
    assert data.images[1, 0, 2, 5].item() == pytest.approx(unit(128), abs=1e-6)


@pytest.mark.parametrize("array, pixel", [
    (np.array([0, 51, 255], dtype=np.uint8), 51),
    (np.array([0, 13107, 65535], dtype=np.uint16), 13107),
    (np.array([0.0, 0.2, 1.0], dtype=np.float32), 0.2),
    (np.array([-1.0, -0.6, 1.0], dtype=np.float64), -0.6),
    (np.array([0.0, 51.0, 200.0], dtype=np.float32), 51.0),
])
def test_npy_value_ranges_round_trip(tmp_path, array, pixel):
    images = np.broadcast_to(array[:, None, None], (3, 8, 8)).copy()
    np.save(tmp_path / "x.npy", images)
    data = load_data(str(tmp_path / "x.npy"))
    assert data.images[1, 0, 3, 3].item() == pytest.approx(-0.6, abs=1e-6), pixel
    assert data.images.min() == -1


def test_npy_alpha_composited_on_white(tmp_path):
    array = np.zeros((1, 8, 8, 4), dtype=np.uint8)  # black but fully transparent
    np.save(tmp_path / "x.npy", array)
    assert torch.equal(load_data(str(tmp_path / "x.npy")).images, torch.ones(1, 3, 8, 8))


def test_npy_non_square_defaults_to_shorter_side(tmp_path):
    array = np.zeros((2, 8, 16), dtype=np.uint8)
    array[:, :, 4:12] = 255
    np.save(tmp_path / "x.npy", array)
    data = load_data(str(tmp_path / "x.npy"))
    assert torch.equal(data.images, torch.ones(2, 1, 8, 8))
    assert load_data(str(tmp_path / "x.npy"), image_size=32).images.shape == (2, 1, 32, 32)


def test_pickled_npy_fails_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    np.save(tmp_path / "x.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="x.npy' is not a readable .npy array"):
        load_data(str(tmp_path / "x.npy"))
    assert not marker.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_npy_fails(tmp_path, bad):
    array = np.zeros((2, 8, 8), dtype=np.float32)
    array[1, 1, 1] = bad
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match="NaN or infinite"):
        load_data(str(tmp_path / "x.npy"))


@pytest.mark.parametrize("shape", [(5, 8), (2, 8, 8, 5), (1, 2, 8, 8, 3), (8, 8, 3)])
def test_wrong_npy_shape_fails(tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DataError, match=r"has shape \(.*expected.*\(N, C, H, W\)"):
        load_data(str(tmp_path / "x.npy"))


def test_out_of_range_npy_fails(tmp_path):
    np.save(tmp_path / "x.npy", np.full((2, 8, 8), -3.0))
    with pytest.raises(DataError, match="values from -3 to -3"):
        load_data(str(tmp_path / "x.npy"))


# --- labels= --------------------------------------------------------------------------------------

@pytest.fixture
def three_images(tmp_path: Path) -> str:
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), dtype=np.uint8))
    return str(tmp_path / "x.npy")


def test_labels_file_gives_class_ids(tmp_path, three_images):
    np.save(tmp_path / "y.npy", np.array([[0.0], [2.0], [1.0]]))
    data = load_data(three_images, labels=str(tmp_path / "y.npy"))
    assert data.labels.tolist() == [0, 2, 1] and data.labels.dtype == torch.int64
    assert data.class_names == ("0", "1", "2")


def test_labels_file_overrides_folder_classes(tmp_path, class_folder):
    np.save(tmp_path / "y.npy", np.array([4, 4, 0, 0, 1]))
    data = load_data(str(class_folder), labels=str(tmp_path / "y.npy"), image_size=8)
    assert data.labels.tolist() == [4, 4, 0, 0, 1] and data.num_classes == 5


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1]), "holds 2 labels but the data has 3 images"),
    (np.zeros((2, 4)), "2 context vectors but the data has 3 images"),
    (np.array([[0, 1], [np.nan, 1], [1, 0]]), "finite numbers"),
    (np.array([0, -1, 1]), "ids from -1 to 1"),
    (np.array([0.5, 1, 1]), "not whole numbers"),
])
def test_bad_labels_fail(tmp_path, three_images, labels, message):
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(DataError, match=message):
        load_data(three_images, labels=str(tmp_path / "y.npy"))


def test_multi_hot_contexts_load_as_float_vectors_with_names(tmp_path, three_images):
    from undiffuse.data import name_contexts

    np.save(tmp_path / "y.npy", np.array([[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0]], np.uint8))
    data = load_data(three_images, labels=str(tmp_path / "y.npy"))
    assert data.labels.dtype == torch.float32 and data.labels.shape == (3, 5) and data.num_classes == 5
    named = name_contexts(data, "hero,non-hero,food,spell,side-facing")
    assert named.class_names[4] == "side-facing"
    with pytest.raises(DataError, match="3 context names for 5"):
        name_contexts(data, "a,b,c")


def test_error_messages_are_one_line(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY garbage\n\nmore")
    with pytest.raises(DataError) as err:
        load_data(str(tmp_path / "x.npy"))
    assert "\n" not in str(err.value) and "x.npy" in str(err.value)


# --- batches --------------------------------------------------------------------------------------

def _indexed(n: int) -> ImageData:
    """Each image's pixels (and label) equal its index, so a batch shows which items it took."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()
    return ImageData(images, torch.arange(n), tuple(str(i) for i in range(n)), "test")


def _take(data: ImageData, batch_size: int, count: int, seed: int) -> list[list[int]]:
    out = []
    for step in range(count):
        images, labels = batch_at(data, batch_size, step, seed)
        assert images.shape == (batch_size, 1, 8, 8)
        assert labels.tolist() == images[:, 0, 0, 0].long().tolist()
        out.append(labels.tolist())
    return out


def test_batches_are_reproducible_and_cover_each_epoch_once():
    data = _indexed(10)
    first = _take(data, 3, 6, seed=0)
    assert first == _take(data, 3, 6, seed=0)
    assert first != _take(data, 3, 6, seed=1)
    for epoch in (first[:3], first[3:]):  # 10 // 3 = 3 batches per epoch, the 10th item dropped
        seen = sum(epoch, [])
        assert len(set(seen)) == 9
    assert first[:3] != first[3:]  # a fresh permutation per epoch


def test_batches_smaller_data_set_than_batch():
    data = ImageData(torch.zeros(2, 1, 8, 8), None, (), "test")
    images, labels = batch_at(data, 5, 0, seed=0)
    assert images.shape == (5, 1, 8, 8) and labels is None
    assert set(_take(_indexed(2), 5, 1, seed=0)[0]) == {0, 1}


# --- IDX (MNIST, Fashion-MNIST) and CIFAR-10 python batches, written in their real formats ------------

def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_load_with_their_labels(tmp_path, compress):
    suffix = ".gz" if compress else ""
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28))
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.array([0, 1, 2, 9, 9, 3]), compress)
    for spec in (tmp_path, tmp_path / f"train-images-idx3-ubyte{suffix}"):
        data = load_data(str(spec))
        assert data.images.shape == (6, 1, 28, 28) and data.num_classes == 10
        assert data.labels.tolist() == [0, 1, 2, 9, 9, 3]
        assert torch.allclose((data.images[2, 0] + 1) / 2 * 255, torch.from_numpy(images[2]).float(), atol=1e-3)


def test_truncated_idx_file_fails_cleanly(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)))
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_data(str(tmp_path))


def _write_cifar(folder: Path, batches: int = 2, per: int = 4) -> np.ndarray:
    import pickle

    folder.mkdir()
    rng = np.random.default_rng(1)
    all_data = []
    for k in range(1, batches + 1):
        data = rng.integers(0, 256, (per, 3072)).astype(np.uint8)
        all_data.append(data)
        batch = {b"batch_label": b"training batch", b"labels": [k % 10] * per, b"data": data}
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(batch, protocol=2))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return np.concatenate(all_data)


def test_cifar10_python_folder_loads_with_class_names(tmp_path):
    raw = _write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_data(str(tmp_path / "cifar-10-batches-py"))
    assert data.images.shape == (8, 3, 32, 32) and data.class_names[8] == "ship"
    assert data.labels.tolist() == [1] * 4 + [2] * 4
    first = torch.from_numpy(raw[0].reshape(3, 32, 32)).float()
    assert torch.allclose((data.images[0] + 1) / 2 * 255, first, atol=1e-3)


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    import pickle

    _write_cifar(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "c" / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_data(str(tmp_path / "c"))


def test_corrupted_cifar_batch_fails_cleanly(tmp_path):
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_2").write_bytes(b"\x80\x02}q\x00(garbage")
    with pytest.raises(DataError, match="data_batch_2"):
        load_data(str(tmp_path / "c"))
