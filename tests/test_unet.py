import pytest
import torch

from undiffuse.conditions import Classes, Condition
from undiffuse.training.recipe import unet_config
from undiffuse.unet import UNet, UNetConfig, count_parameters, sinusoidal_embedding


def _classes(vectors: torch.Tensor) -> Condition:
    return Condition(Classes.of(vectors))


def _randomised(cfg: UNetConfig) -> UNet:
    """A U-Net whose zero-initialised output layers are made non-zero, so every input matters."""
    torch.manual_seed(0)
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (1, 16), (3, 17), (1, 8)])
def test_output_shape_matches_input(channels, size):
    net = UNet(UNetConfig(channels=channels, base=16, mults=(1, 2, 2), blocks=1, attention=(2,)))
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


@pytest.mark.parametrize("size", [28, 32, 64])
def test_recipe_configs_build_for_common_sizes(size):
    cfg = unet_config("tiny", size, 3, 10)
    net = UNet(cfg)
    x = torch.randn(1, 3, size, size)
    assert net(x, torch.tensor([5]), _classes(torch.eye(10)[:1])).shape == x.shape
    assert cfg.attention  # attention at the low resolutions
    assert count_parameters(net) > 0


def test_context_changes_the_output_and_null_rows_are_unconditional():
    net = _randomised(UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=(1,), context_dim=10))
    x, t = torch.randn(2, 1, 16, 16).repeat(1, 1, 1, 1), torch.tensor([500, 500])
    x = x[:1].repeat(2, 1, 1, 1)
    with torch.no_grad():
        out = net(x, t, _classes(torch.eye(10)[[3, 7]]))
        assert not torch.allclose(out[0], out[1], atol=1e-4)  # digit 3 and digit 7 differ
        null = net(x, t, Condition(Classes(torch.eye(10)[[3, 7]], torch.tensor([True, True]))))
        assert torch.allclose(null[0], null[1], atol=1e-6)  # both null: the context is ignored
        assert torch.allclose(null, net(x, t, None), atol=1e-6)


def test_time_changes_the_output():
    net = _randomised(UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=()))
    x = torch.randn(1, 1, 16, 16).repeat(2, 1, 1, 1)
    with torch.no_grad():
        out = net(x, torch.tensor([10, 900]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_sinusoidal_embedding():
    emb = sinusoidal_embedding(torch.tensor([0, 1, 500]), 32)
    assert emb.shape == (3, 32)
    assert torch.allclose(emb[0, :16], torch.zeros(16)) and torch.allclose(emb[0, 16:], torch.ones(16))
    assert torch.allclose(emb.pow(2).sum(1), torch.full((3,), 16.0))  # sin^2 + cos^2 per frequency


def test_config_is_validated():
    with pytest.raises(ValueError):
        UNetConfig(base=0)
    with pytest.raises(ValueError, match="groups"):
        UNetConfig(base=12, groups=8)


# --- block styles ------------------------------------------------------------------------------------

def test_adm_blocks_take_one_scale_shift_and_the_mid_block_is_res_attn_res():
    film = UNet(UNetConfig(base=16, mults=(1, 2), attention=(1,), context_dim=3))
    adm = UNet(UNetConfig(base=16, mults=(1, 2), attention=(1,), context_dim=3, block_style="adm"))
    assert film.cfg.block_style == "film"  # the default: what every run before the field used
    assert {"shift", "scale"} <= dict(film.down[0].blocks[0].named_children()).keys()
    assert adm.down[0].blocks[0].scale_shift.out_features == 2 * 16
    assert [type(a).__name__ for a in film.mid.attns] == ["Attention", "Attention"]
    assert [type(a).__name__ for a in adm.mid.attns] == ["Attention", "Identity"]
    with pytest.raises(ValueError, match="block_style"):
        UNetConfig(block_style="resnet")


def test_adm_class_changes_the_output_and_null_rows_are_unconditional():
    net = _randomised(UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=(1,), context_dim=10,
                                 block_style="adm"))
    x, t = torch.randn(1, 1, 16, 16).repeat(2, 1, 1, 1), torch.tensor([500, 500])
    with torch.no_grad():
        out = net(x, t, _classes(torch.eye(10)[[3, 7]]))
        assert not torch.allclose(out[0], out[1], atol=1e-4)
        null = net(x, t, Condition(Classes(torch.eye(10)[[3, 7]], torch.tensor([True, True]))))
        assert torch.allclose(null, net(x, t, None), atol=1e-6)


def test_the_adm_unet_trains_on_the_digits(tmp_path):
    from undiffuse.training import TrainConfig, Trainer, read_log

    cfg = TrainConfig.flat(data="digits", steps=30, batch_size=16, model="tiny", grids=0, seed=0, block_style="adm")
    Trainer.create(cfg, tmp_path / "run").train(progress=False)
    steps, losses = read_log(tmp_path / "run")
    assert steps[-1] == 30
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5  # the loss falls


def test_configs_without_block_style_load_as_film(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from undiffuse.generation import generate, load_run
    from undiffuse.run import read_run
    from undiffuse.training import TrainConfig, Trainer

    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "format1_config.json", old / "config.json")
    assert read_run(old).unet.block_style == "film"  # format 1
    run = tmp_path / "run"
    Trainer.create(TrainConfig.flat(data="digits", image_size=16, steps=2, batch_size=8, model="tiny", grids=0,
                                    block_style="film"),
                   run).train(progress=False)
    before = generate(load_run(run), 2, labels=[1, 2], steps=2)
    config = json.loads((run / "config.json").read_text())
    assert config["unet"].pop("block_style") == "film"
    (run / "config.json").write_text(json.dumps(config))  # as format 2 wrote it before the field
    assert read_run(run).unet.block_style == "film"
    assert torch.equal(generate(load_run(run), 2, labels=[1, 2], steps=2), before)


@pytest.mark.parametrize("patch", [2, 4])
def test_a_patch_stem_runs_the_levels_at_a_fraction_of_the_resolution_and_gives_the_image_back(patch):
    from undiffuse.training.recipe import unet_config

    cfg = unet_config("tiny", 64, 3, 5, patch=patch)
    assert cfg.patch == patch and cfg.multiple == cfg.downsampling * patch
    plain = unet_config("tiny", 64, 3, 5)
    assert len(cfg.mults) < len(plain.mults)  # 64 / patch reaches 8 in fewer halvings
    net = UNet(cfg)
    torch.nn.init.normal_(net.conv_out.weight)
    seen = []
    net.conv_in.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    x = torch.randn(2, 3, 60, 60)  # padded to a multiple, cropped back
    out = net(x, torch.tensor([3, 900]), _classes(torch.eye(5)[:2]))
    assert out.shape == x.shape and seen[0][-1] == 64 // patch
    # the stem is a rearrangement: each output pixel comes from its own tile's channels
    tiles = torch.nn.functional.pixel_unshuffle(torch.arange(16.0).view(1, 1, 4, 4), patch)
    assert torch.equal(torch.nn.functional.pixel_shuffle(tiles, patch), torch.arange(16.0).view(1, 1, 4, 4))
