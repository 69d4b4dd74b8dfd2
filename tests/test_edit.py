"""Editing: inpainting against the Gaussian conditional in closed form, SDEdit's two ends and its
monotone middle, slerp, the high-level functions on a small random network, and the commands."""
import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse import edit
from undiffuse.cli import main
from undiffuse.data import load_image
from undiffuse.generation import LoadedRun, generate
from undiffuse.samplers import ddim, timesteps
from undiffuse.schedule import linear
from undiffuse.unet import UNet, UNetConfig

from cli_helpers import fails_cleanly
from gaussian import Mixture, exact_denoise

SCHEDULE = linear(1000)


# --- inpainting with the exact denoiser of Gaussian data -------------------------------------------

def _gaussian(d=3, rho=0.9):
    """Zero mean, unit variances, every pair correlated rho: knowing one pixel says much of the others."""
    cov = (1 - rho) * torch.eye(d, dtype=torch.float64) + rho * torch.ones(d, d, dtype=torch.float64)
    return Mixture([1.0], torch.zeros(1, d), cov[None]), cov


def _inpaint_gaussian(moves, n=2000, known_value=1.5, d=3, k=1, eta=1.0):
    """Pixel 0..k-1 known (= known_value), the others inpainted; returns the samples and the closed form."""
    data, cov = _gaussian(d)
    known = torch.zeros(n, 1, 1, d, dtype=torch.float64)
    known[..., :k] = known_value
    mask = torch.zeros(1, 1, 1, d)
    mask[..., k:] = 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 1, d, generator=gen, dtype=torch.float64)
    out = edit.inpaint_walk(data.denoise(SCHEDULE), SCHEDULE, x, known, mask, moves, eta=eta, generator=gen)
    # Gaussian conditioning: x_u | x_k ~ N(S_uk S_kk^-1 x_k, S_uu - S_uk S_kk^-1 S_ku) (zero mean)
    s_kk, s_uk, s_uu = cov[:k, :k], cov[k:, :k], cov[k:, k:]
    mean = s_uk @ torch.linalg.solve(s_kk, known[0, 0, 0, :k])
    covariance = s_uu - s_uk @ torch.linalg.solve(s_kk, s_uk.T)
    return out[:, 0, 0], known[:, 0, 0], mean, covariance


@pytest.mark.parametrize("method", ["repaint", "replace"])
def test_inpainting_puts_back_the_known_pixels_exactly(method):
    moves = edit.inpaint_moves(1000, method, steps=20, jump=3, resample=3)
    out, known, _, _ = _inpaint_gaussian(moves, n=64)
    assert torch.equal(out[:, :1], known[:, :1])
    assert out[:, 1:].std() > 0.1  # and the others were generated


def test_repaint_samples_the_gaussian_conditional_and_plain_replacement_does_not():
    """The known pixel sits 1.5 standard deviations out; the conditional mean of the other two is
    1.35 and their conditional covariance [[0.19, 0.09], [0.09, 0.19]]. RePaint (200 levels, jump 10,
    resample 10) lands within 0.06 of that mean and 0.011 of that covariance (measured over 2,000
    draws, whose own error is about 0.01): close, not exact, and more resampling does not make it
    exact. Replacement alone lets the unknown pixels settle before they hear of the known one:
    0.57 short of the mean, the covariance off by 0.18 (variances 1.8x too wide)."""
    samples = {}
    for name, moves in (("repaint", edit.repaint_moves(1000, 200, jump=10, resample=10)),
                        ("replace", edit.replace_moves(1000, 50))):
        out, _, mean, cov = _inpaint_gaussian(moves)
        unknown = out[:, 1:]
        samples[name] = ((unknown.mean(0) - mean).abs().max().item(), (torch.cov(unknown.T) - cov).abs().max().item())
    (mean_err, cov_err), (replace_mean_err, replace_cov_err) = samples["repaint"], samples["replace"]
    print(samples)
    assert mean_err < 0.1 and cov_err < 0.04
    assert replace_mean_err > 0.3 and replace_cov_err > 0.1
    assert mean_err < replace_mean_err / 5


def test_inpainting_walks_with_the_samplers_ddim_step():
    """With nothing kept, every projection leaves x as it is: replacement at eta 0 is then DDIM over
    the same steps, to the last bit, and RePaint's walk visits its moves in order."""
    data, _ = _gaussian()
    denoise = data.denoise(SCHEDULE)
    x = torch.randn(16, 1, 1, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    everything = torch.ones(1, 1, 1, 3)
    out = edit.inpaint_walk(denoise, SCHEDULE, x, torch.zeros_like(x), everything, edit.replace_moves(1000, 20),
                            eta=0.0)
    assert torch.equal(out, ddim(denoise, SCHEDULE, x, timesteps(1000, 20)))
    moves, seen = edit.repaint_moves(1000, 10, jump=3, resample=2), []
    edit.inpaint_walk(denoise, SCHEDULE, x, torch.zeros_like(x), everything, moves, callback=seen.append)
    assert [(d["i"], d["t"]) for d in seen] == list(enumerate(t for t, t_next in moves if t_next < t))


def test_repaint_walk_goes_back_up_jump_levels_resample_times():
    moves = edit.repaint_moves(1000, 10, jump=3, resample=4)
    assert moves[0][0] == 999 and moves[-1] == (99, -1)
    levels = timesteps(1000, 10)
    ups = [(t, t_next) for t, t_next in moves if t_next > t]
    assert all(levels.index(t) - levels.index(t_next) == 1 for t, t_next in ups)  # one level at a time
    # 10 steps down, plus 3 extra passes of 3 levels at each of the jump points 0, 3 and 6
    assert edit.network_calls(moves) == 10 + 3 * 3 * 3 == len(moves) - len(ups)
    assert edit.repaint_moves(1000, 10, jump=3, resample=1) == edit.replace_moves(1000, 10)
    with pytest.raises(ValueError, match="resample"):
        edit.repaint_moves(1000, 10, jump=3, resample=0)


# --- SDEdit ------------------------------------------------------------------------------------------

M, S = 0.4, 0.25


def _sdedit(image, strength, seed=0, **options):
    return edit.sdedit(exact_denoise(SCHEDULE, M, S), SCHEDULE, image, strength, steps=20,
                       generator=torch.Generator().manual_seed(seed), **options)


def test_sdedit_strength_0_returns_the_image_and_strength_1_ignores_it():
    a = torch.randn(16, 1, 1, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b = -3 * a + 1
    assert torch.equal(_sdedit(a, 0.0), a)
    assert torch.equal(_sdedit(a, 1.0), _sdedit(b, 1.0))
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(_sdedit(a, 1.0), ddim(exact_denoise(SCHEDULE, M, S), SCHEDULE, noise, timesteps(1000, 20)))
    assert not torch.allclose(_sdedit(a, 0.99), _sdedit(b, 0.99))
    with pytest.raises(ValueError, match="strength"):
        _sdedit(a, 1.5)


def test_sdedit_starts_its_sampler_at_round_strength_times_T():
    seen = []
    _sdedit(torch.zeros(2, 1, 1, 2, dtype=torch.float64), 0.3, callback=lambda step: seen.append(step["t"]))
    assert seen[0] == 299 and len(seen) == 20 and seen == timesteps(300, 20)
    seen.clear()
    _sdedit(torch.zeros(2, 1, 1, 2, dtype=torch.float64), 0.3, sampler="ddpm", callback=lambda step: seen.append(step["t"]))
    assert seen == list(range(299, -1, -1))
    seen.clear()
    _sdedit(torch.zeros(2, 1, 1, 2, dtype=torch.float64), 0.3, spacing="karras",
            callback=lambda step: seen.append(step["t"]))
    assert seen == timesteps(300, 20, "karras", SCHEDULE)  # Karras' levels over the steps below t0


def test_sdedit_stays_closer_to_the_image_the_lower_the_strength():
    """Images drawn from data of unit variance: every strength gives data-like images, the further
    from the input the more noise was put in first, until at strength 1 they are independent."""
    denoise = exact_denoise(SCHEDULE, 0.0, 1.0)
    images = torch.randn(2000, 1, 1, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    distances = []
    for strength in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
        out = edit.sdedit(denoise, SCHEDULE, images, strength, steps=20, generator=torch.Generator().manual_seed(0))
        distances.append((out - images).pow(2).mean().sqrt().item())
    print(distances)
    assert all(a < b for a, b in zip(distances, distances[1:]))
    independent = (images.var() + out.var() + (images.mean() - out.mean()) ** 2).sqrt().item()
    assert distances[0] < 0.2 and distances[-1] == pytest.approx(independent, rel=0.03)


# --- slerp -------------------------------------------------------------------------------------------

def test_slerp_ends_at_its_endpoints_and_keeps_the_norm():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, 64, 64, generator=gen), torch.randn(2, 1, 64, 64, generator=gen)
    assert torch.equal(edit.slerp(a, b, 0.0), a) and torch.equal(edit.slerp(a, b, 1.0), b)
    mid, straight = edit.slerp(a, b, 0.5), (a + b) / 2
    ratio = mid.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.ones(2), atol=0.02)  # random high-dimensional noise: nearly orthogonal
    assert (straight.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max() < 0.75  # a line cuts the sphere
    e1, e2 = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    for w in (0.1, 0.5, 0.9):
        assert edit.slerp(e1, e2, w).norm().item() == pytest.approx(3.0, rel=1e-6)
    ws = torch.linspace(0, 1, 5, dtype=torch.float64)
    path = edit.slerp(e1.expand(5, 2), e2.expand(5, 2), ws)
    assert torch.allclose(path[2], torch.tensor([1.5, 1.5]) * 2 ** 0.5)
    assert torch.allclose(edit.slerp(e1, 2 * e1, 0.5), 1.5 * e1)  # parallel: a straight line


# --- the high-level functions on a small network with random weights -----------------------------

@pytest.fixture(scope="module")
def run():
    """A conditional run whose every weight is random, so that contexts and guidance change the output."""
    cfg = UNetConfig(channels=1, base=8, mults=(1, 2), blocks=1, attention=(1,), head_channels=8, context_dim=3,
                     groups=4)
    net = UNet(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return LoadedRun(net.eval(), SCHEDULE, "eps", ("a", "b", "c"), 8, 1, {})


def _image(seed=0, size=8):
    return torch.rand(1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("method", ["repaint", "replace"])
def test_inpaint_keeps_the_known_pixels_of_each_result(run, method):
    image, mask = _image(), torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 3:7] = True
    out = edit.inpaint(run, image, mask, method=method, steps=6, jump=2, resample=2, n=3, labels=[0, 1, 2],
                       guidance=2.0, seed=5)
    assert out.shape == (3, 1, 8, 8) and out.abs().max() <= 1
    assert all(torch.equal(result[0][~mask], image[0][~mask]) for result in out)
    assert not torch.allclose(out[0], out[1])  # other seeds and labels, other fillings
    again = edit.inpaint(run, image, mask, method=method, steps=6, jump=2, resample=2, labels=[1], guidance=2.0, seed=6)
    assert torch.allclose(again[0], out[1], atol=1e-5)  # result i depends on seed + i and its label only


def test_outpaint_grows_the_canvas_around_the_image(run):
    image = _image(1)
    out = edit.outpaint(run, image, (2, 0, 4, 1), method="replace", steps=5, contexts=torch.tensor([[0.5, 0.5, 0.0]]))
    assert out.shape == (1, 1, 9, 14)
    assert torch.equal(out[0, :, 0:8, 2:10], image)
    with pytest.raises(ValueError, match="pad"):
        edit.outpaint(run, image, (0, 0, 0, 0))


def test_img2img_at_strength_1_is_sample_and_at_0_the_image(run):
    image = _image(2).expand(2, -1, -1, -1)
    sampled = generate(run, 2, labels=[2, 0], sampler="ddim", steps=5, guidance=3.0, seed=7)
    edited = edit.img2img(run, image, strength=1.0, sampler="ddim", steps=5, labels=[2, 0], guidance=3.0, seed=7)
    assert torch.allclose(edited, sampled, atol=1e-5)
    assert torch.equal(edit.img2img(run, image, strength=0.0, labels=[2, 0]), image)
    half = edit.img2img(run, image, strength=0.5, steps=5, labels=[2, 0], guidance=3.0, seed=7)
    assert 0 < (half - image).abs().mean() < (sampled - image).abs().mean()


def test_interpolate_ends_at_the_seeds_samples(run):
    strip = edit.interpolate(run, seeds=(3, 11), n=5, steps=4, labels=[1] * 5, guidance=2.0)
    assert strip.shape == (5, 1, 8, 8)
    for i, seed in ((0, 3), (-1, 11)):
        alone = generate(run, 1, labels=[1], sampler="ddim", steps=4, guidance=2.0, seed=seed)
        assert torch.allclose(strip[i], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="deterministic"):
        edit.interpolate(run, seeds=(0, 1), sampler="ddpm")


def test_high_level_functions_refuse_bad_shapes(run):
    with pytest.raises(ValueError, match="C = 1"):
        edit.img2img(run, torch.zeros(3, 8, 8), strength=0.5)
    with pytest.raises(ValueError, match="mask"):
        edit.inpaint(run, _image(), torch.ones(4, 4))
    with pytest.raises(ValueError, match="method"):
        edit.inpaint(run, _image(), torch.ones(8, 8), method="smudge")
    with pytest.raises(ValueError, match="labels for"):
        edit.inpaint(run, _image(), torch.ones(8, 8), n=2, labels=[0])


# --- the commands, on the tiny trained run of conftest.py (16x16 digits, 10 classes) ---------------

QUICK = ["--steps", "6", "--n", "2"]


def _cli(argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def files(tmp_path):
    """A 24x24 digit-like picture, a mask of its right half (white = regenerate), and broken files."""
    picture = np.zeros((24, 24), np.uint8)
    picture[4:20, 8:12] = 255
    Image.fromarray(picture).save(tmp_path / "img.png")
    mask = np.zeros((48, 48), np.uint8)
    mask[:, 24:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")  # twice the image's size: resized like it
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(mask[:, :30]).save(tmp_path / "narrow.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return tmp_path


def _unit(path, size=16):
    return ((load_image(path, size, 1) + 1) / 2).numpy()


def test_inpaint_command_keeps_the_image_outside_the_mask(trained, files, capsys):
    for method in ("repaint", "replace"):
        out = files / f"{method}.npy"
        assert _cli(["inpaint", trained, "--image", files / "img.png", "--mask", files / "mask.png", "--method",
                     method, *QUICK, "--label", "3", "--out", out]) == 0
        results, image = np.load(out), _unit(files / "img.png")
        assert results.shape == (2, 1, 16, 16) and np.load(files / f"{method}.labels.npy").tolist() == [3, 3]
        assert np.abs(results[:, :, :, :8] - image[:, :, :8]).max() < 1e-6  # the left half is the image
    assert _cli(["inpaint", trained, "--image", files / "img.png", "--mask", files / "mask.png", "--jump", "2",
                 "--resample", "2", *QUICK, "--out", files / "grid.png", "--gif", files / "grid.gif"]) == 0
    grid = Image.open(files / "grid.png")
    assert grid.size[0] > 3.5 * grid.size[1]  # input | mask | 2 results in one row
    assert Image.open(files / "grid.gif").n_frames >= 3
    assert "2 inpaintings" in capsys.readouterr().out


def test_outpaint_command_grows_the_image(trained, files):
    out = files / "wide.npy"
    assert _cli(["outpaint", trained, "--image", files / "img.png", "--pad", "4,0,4,2", "--method", "replace",
                 *QUICK, "--out", out]) == 0
    results = np.load(out)
    assert results.shape == (2, 1, 18, 24)
    assert np.abs(results[:, :, :16, 4:20] - _unit(files / "img.png")).max() < 1e-6
    assert _cli(["outpaint", trained, "--image", files / "img.png", "--pad", "0,3,0,0", *QUICK,
                 "--out", files / "tall.png"]) == 0


def test_img2img_command_from_strength_0_to_a_new_label(trained, files):
    assert _cli(["img2img", trained, "--image", files / "img.png", "--strength", "0", "--out", files / "same.npy"]) == 0
    assert np.abs(np.load(files / "same.npy") - _unit(files / "img.png")).max() < 1e-6
    assert _cli(["img2img", trained, "--image", files / "img.png", "--strength", "0.6", "--label", "8",
                 "--sampler", "dpmpp-2m", *QUICK, "--out", files / "eight.png", "--gif", files / "eight.gif"]) == 0
    assert Image.open(files / "eight.png").size[0] > 2.5 * Image.open(files / "eight.png").size[1]
    assert Image.open(files / "eight.gif").n_frames >= 3


def test_interpolate_command_ends_at_sample_and_animates(trained, files):
    assert _cli(["interpolate", trained, "--seeds", "4,9", "--n", "5", "--steps", "4", "--label", "2",
                 "--out", files / "strip.npy"]) == 0
    strip = np.load(files / "strip.npy")
    assert strip.shape == (5, 1, 16, 16)
    for i, seed in ((0, 4), (-1, 9)):
        assert _cli(["sample", trained, "--n", "1", "--seed", seed, "--steps", "4", "--label", "2",
                     "--out", files / "one.npy"]) == 0
        assert np.abs(np.load(files / "one.npy")[0] - strip[i]).max() < 1e-5
    assert _cli(["interpolate", trained, "--seeds", "4,9", "--n", "4", "--steps", "3", "--out", files / "strip.gif"]) == 0
    assert Image.open(files / "strip.gif").n_frames == 6  # there and back
    assert _cli(["interpolate", trained, "--seeds", "4,9", "--n", "4", "--steps", "3", "--out", files / "strip.png"]) == 0


@pytest.mark.parametrize("argv,needle", [
    (["inpaint", "{run}", "--image", "{tmp}/missing.png", "--mask", "{tmp}/mask.png"], "no such file"),
    (["inpaint", "{run}", "--image", "{tmp}/broken.png", "--mask", "{tmp}/mask.png"], "cannot be read"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/broken.png"], "cannot be read"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/black.png"], "all black"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/narrow.png"], "shape"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/mask.png", "--method", "replace",
      "--jump", "3"], "repaint only"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/mask.png", "--eta", "0"], "replace only"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/mask.png", "--resample", "0"], "--resample"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/mask.png", "--steps", "5000"], "steps"),
    (["inpaint", "{run}", "--image", "{tmp}/img.png", "--mask", "{tmp}/mask.png", "--label", "12"], "out of range"),
    (["inpaint", "{tmp}/norun", "--image", "{tmp}/img.png", "--mask", "{tmp}/mask.png"], "does not exist"),
    (["outpaint", "{run}", "--image", "{tmp}/img.png", "--pad", "1,2,3"], "LEFT,TOP,RIGHT,BOTTOM"),
    (["outpaint", "{run}", "--image", "{tmp}/img.png", "--pad=-1,0,0,0"], ">= 0"),
    (["outpaint", "{run}", "--image", "{tmp}/img.png", "--pad", "0,0,0,0"], "not all 0"),
    (["outpaint", "{run}", "--image", "{tmp}/img.png", "--pad", "100,0,0,0"], "at most 48"),
    (["img2img", "{run}", "--image", "{tmp}/img.png", "--strength", "1.5"], "[0, 1]"),
    (["img2img", "{run}", "--image", "{tmp}/img.png", "--strength", "0.5", "--n", "0"], "--n"),
    (["img2img", "{run}", "--image", "{tmp}/img.png", "--strength", "0.5", "--context", "3", "--label", "3"], "not both"),
    (["img2img", "{run}", "--image", "{tmp}/img.png"], "--strength"),
    (["interpolate", "{run}", "--seeds", "1"], "A,B"),
    (["interpolate", "{run}", "--seeds", "1,2", "--sampler", "ddpm"], "invalid choice"),
    (["interpolate", "{run}", "--seeds", "1,2", "--n", "1"], "--n"),
])
def test_edit_commands_refuse_bad_input_in_one_line(trained, files, capsys, argv, needle):
    out = files / "out.png"
    argv = [a.replace("{run}", str(trained)).replace("{tmp}", str(files)) for a in argv]
    err = fails_cleanly(capsys, [*argv, "--out", out])
    assert needle in err
    assert not out.exists()


def test_edit_commands_name_their_outputs(trained, files, capsys):
    source = ["--image", files / "img.png", "--mask", files / "mask.png"]
    assert ".png or .npy" in fails_cleanly(capsys, ["inpaint", trained, *source, "--out", files / "x.jpg"])
    assert "--gif" in fails_cleanly(capsys, ["inpaint", trained, *source, "--out", files / "x.png", "--gif", files / "x.png"])
    assert ".gif" in fails_cleanly(capsys, ["interpolate", trained, "--seeds", "1,2", "--out", files / "x.jpg"])
    assert not (files / "x.png").exists()


def test_help_lists_the_edit_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("inpaint", "outpaint", "img2img", "interpolate"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["inpaint", "--help"])
    out = capsys.readouterr().out
    assert "--resample" in out and "white" in out
