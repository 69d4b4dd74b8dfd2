"""undiffuse's U-Net and schedule <-> diffusers' UNet2DModel and DDPMScheduler, as plain data.

Nothing here imports diffusers: these functions turn a run's record and weights into the config and
the state dict of a UNet2DModel (and back), and a schedule into a scheduler config (and back);
`interop.folders` reads and writes the folders. Only "adm" U-Nets map (see unet.py): block for block,
    ResBlock (norm1, conv1, scale_shift, norm2, conv2, skip)  ResnetBlock2D, resnet_time_scale_shift="scale_shift"
    Attention (norm, qkv as one 1x1 conv, out)               Attention (group_norm, to_q/to_k/to_v, to_out.0)
    mid: res-attn-res                                         UNetMidBlock2D, attn_norm_num_groups = groups
    [sin, cos] time embedding                                 flip_sin_to_cos=False, freq_shift=0
    ContextEmbedding of a one-hot class, and its null         nn.Embedding of K + 1 rows, the last the null
A film block shifts by a plain Linear of the time embedding and scales by a separate context
embedding; a UNet2DModel block takes one SiLU'd embedding, so film runs have no exact counterpart.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CheckpointError, UsageError
from ..run import RunRecord, ScheduleSpec
from ..schedule import SCHEDULES, make_schedule
from ..unet import UNetConfig

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SPACING = "trailing"  # undiffuse's default grid (grids.py)
RES = {"norm1": "norm1", "conv1": "conv1", "scale_shift": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
       "skip": "conv_shortcut"}
QKV = ("to_q", "to_k", "to_v")
# silu(32) is exactly 32 in float32 (sigmoid(32) rounds to 1) and dividing by a power of two is exact:
# a one-hot class through the imported context MLP gives its table row bit for bit.
CLASS_GAIN = 32.0


# --- configs -----------------------------------------------------------------------------------------

def unet2d_config(record: RunRecord) -> dict:
    """The UNet2DModel config of a run, or a UsageError naming what diffusers cannot express."""
    cfg = record.unet
    if cfg.text_dim:
        raise UsageError("this run is conditioned on text prompts, which diffusers' UNet2DModel cannot take; "
                         "only unconditional and class-conditional runs export")
    if cfg.cond_channels:
        raise UsageError("this run upscales: its U-Net takes a low-resolution image and its noise level, which "
                         "diffusers' UNet2DModel cannot take; only unconditional and class-conditional runs export")
    if cfg.guidance_input:
        raise UsageError("this run is a distilled student: its U-Net takes the guidance scale as an input, which "
                         "diffusers' UNet2DModel cannot take; export its teacher")
    if cfg.patch > 1:
        raise UsageError(f"this run has a {cfg.patch}x{cfg.patch} patch stem (the colour recipe's on a CPU), which "
                         "UNet2DModel does not have; train with --patch 1 --block-style adm to export")
    if cfg.block_style != "adm":
        raise UsageError(f"this run has {cfg.block_style} blocks (a context scale and an un-activated time shift of "
                         "their own), which diffusers' UNet2DModel cannot express exactly; train with "
                         "--block-style adm to export")
    if record.image_size % cfg.downsampling:
        raise UsageError(f"undiffuse pads {record.image_size}x{record.image_size} images to a multiple of "
                         f"{cfg.downsampling}; UNet2DModel does not pad, so this run cannot be exported")
    attend = [i in cfg.attention for i in range(len(cfg.mults))]
    return dict(
        sample_size=record.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
        center_input_sample=False, time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=0,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attend],
        mid_block_type="UNetMidBlock2D",
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)],
        block_out_channels=cfg.level_channels, layers_per_block=cfg.blocks, mid_block_scale_factor=1,
        downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=cfg.dropout, act_fn="silu",
        attention_head_dim=_head_dim(cfg), norm_num_groups=cfg.groups, attn_norm_num_groups=cfg.groups,
        norm_eps=1e-5, resnet_time_scale_shift="scale_shift", add_attention=True, class_embed_type=None,
        num_class_embeds=cfg.context_dim + 1 if cfg.context_dim else None)


def _head_dim(cfg: UNetConfig) -> int:
    """diffusers sets one head size for every attention; undiffuse one head count rule per width."""
    widths = {cfg.level_channels[i] for i in cfg.attention} | {cfg.level_channels[-1]}
    sizes = {c // max(1, c // cfg.head_channels) for c in widths}
    if len(sizes) != 1:
        raise UsageError(f"this run's attention heads differ in size across levels ({sorted(sizes)}); "
                         "UNet2DModel has one attention_head_dim")
    return sizes.pop()


def scheduler_config(record: RunRecord) -> dict:
    """A DDPMScheduler config with the run's own betas, prediction, and undiffuse's grid and DDPM variance."""
    return dict(num_train_timesteps=record.schedule.T, trained_betas=record.schedule.build().betas.tolist(),
                prediction_type=PREDICTION_TYPES[record.prediction], timestep_spacing=SPACING,
                variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0, thresholding=False,
                rescale_betas_zero_snr=False, steps_offset=0)


# What undiffuse's blocks compute; any other value of these UNet2DModel keys is refused by name.
REQUIRED = dict(center_input_sample=False, time_embedding_type="positional", freq_shift=0,
                mid_block_type="UNetMidBlock2D", mid_block_scale_factor=1, downsample_padding=1,
                downsample_type="conv", upsample_type="conv", act_fn=("silu", "swish"), norm_eps=1e-5,
                resnet_time_scale_shift="scale_shift", add_attention=True, class_embed_type=None)
DOWN, UP = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")


# The numbers of a UNet2DModel config that undiffuse reads, their types and ranges, checked before any is
# used: a string, a float or a 5,000-digit integer in one of them is refused by name, not met inside torch.
WHOLE = dict(in_channels=(1, 3), out_channels=(1, 3), layers_per_block=(1, 64), norm_num_groups=(1, 4096),
             attn_norm_num_groups=(1, 4096), attention_head_dim=(1, 4096), time_embedding_dim=(1, 65536),
             num_class_embeds=(2, 65537))


def unet_config_of(config: dict, where: str) -> tuple[UNetConfig, int]:
    """(UNetConfig, image size) of a complete UNet2DModel config (defaults filled in), or a
    CheckpointError naming the first key undiffuse cannot express."""
    _check_types(config, where)
    _check_required(config, where)
    base, mults = _levels(config, where)
    if config["in_channels"] != config["out_channels"] or config["in_channels"] not in (1, 3):
        _refuse(where, "in_channels", config["in_channels"], "undiffuse runs have 1 or 3 image channels in and out")
    if config["time_embedding_dim"] not in (None, 4 * base):
        _refuse(where, "time_embedding_dim", config["time_embedding_dim"], f"undiffuse uses 4 x {base}")
    attention = _attention(config, where)
    size = _image_size(config, where, 2 ** (len(mults) - 1))
    classes = _classes(config, where, 4 * base)
    try:
        cfg = UNetConfig(channels=config["in_channels"], base=base, mults=mults, blocks=config["layers_per_block"],
                         attention=attention, head_channels=_head_channels(config, where, attention, base, mults),
                         context_dim=classes, groups=config["norm_num_groups"], dropout=float(config["dropout"]),
                         context_mode="add", block_style="adm")
    except UsageError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return cfg, size


def _check_types(config: dict, where: str) -> None:
    for key, (low, high) in WHOLE.items():
        value = config.get(key)
        if value is not None and not (type(value) is int and low <= value <= high):
            _refuse(where, key, _short(value), f"a whole number in [{low}, {high}]")
    widths = config.get("block_out_channels")
    if not (isinstance(widths, (list, tuple)) and 1 <= len(widths) <= 10
            and all(type(w) is int and 1 <= w <= 8192 for w in widths)):
        _refuse(where, "block_out_channels", _short(widths), "1 to 10 whole numbers in [1, 8192]")
    for key in ("down_block_types", "up_block_types"):
        if not (isinstance(config.get(key), (list, tuple)) and all(isinstance(t, str) for t in config[key])):
            _refuse(where, key, _short(config.get(key)), "a list of block names")
    dropout = config.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        _refuse(where, "dropout", _short(dropout), "a number in [0, 1)")


def _short(value) -> object:
    """A value as a refusal quotes it: a huge integer by its size, a long text or list cut."""
    if type(value) is int and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return value if len(text) <= 60 else text[:57] + "..."


def _check_required(config: dict, where: str) -> None:
    for key, allowed in REQUIRED.items():
        if config[key] not in (allowed if isinstance(allowed, tuple) else (allowed,)):
            _refuse(where, key, config[key], f"undiffuse computes {allowed!r}")
    if config["attn_norm_num_groups"] != config["norm_num_groups"]:
        _refuse(where, "attn_norm_num_groups", config["attn_norm_num_groups"],
                f"undiffuse's mid attention has a GroupNorm of norm_num_groups={config['norm_num_groups']}")


def _refuse(where: str, key: str, value, why: str):
    raise CheckpointError(f"{where}: {key} = {value!r} cannot be expressed by undiffuse ({why})")


def _levels(config: dict, where: str) -> tuple[int, tuple[int, ...]]:
    widths = list(config["block_out_channels"])
    base = widths[0]
    if any(w % base for w in widths) or not 1 <= len(widths) <= 10:
        _refuse(where, "block_out_channels", widths, "1 to 10 levels, each a multiple of the first")
    if base % 2:
        _refuse(where, "block_out_channels", widths, "the time embedding needs an even width")
    return base, tuple(w // base for w in widths)


def _attention(config: dict, where: str) -> tuple[int, ...]:
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    for key, types, known in (("down_block_types", down, DOWN), ("up_block_types", up, UP)):
        if len(types) != len(config["block_out_channels"]) or any(t not in known for t in types):
            _refuse(where, key, types, f"one of {', '.join(known)} per level")
    attention = tuple(i for i, t in enumerate(down) if t == DOWN[1])
    if attention != tuple(len(up) - 1 - i for i, t in reversed(list(enumerate(up))) if t == UP[1]):
        _refuse(where, "up_block_types", up, "attention at the same levels as down_block_types")
    return attention


def _head_channels(config: dict, where: str, attention, base: int, mults) -> int:
    """undiffuse's head_channels giving UNet2DModel's heads: c // attention_head_dim heads of that size."""
    widths = [base * mults[i] for i in attention] + [base * mults[-1]]
    size = config["attention_head_dim"]
    if size is None:  # diffusers: one head of every width
        return max(widths)
    if any(c % size or c < size for c in widths):
        _refuse(where, "attention_head_dim", size, f"a divisor of every attention width {sorted(set(widths))}")
    return size


def _image_size(config: dict, where: str, multiple: int) -> int:
    size = config["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or not 8 <= size <= 1024 or size % multiple:
        _refuse(where, "sample_size", size, f"a square side in [8, 1024], a multiple of {multiple}")
    return size


def _classes(config: dict, where: str, emb_dim: int) -> int:
    """K classes from num_class_embeds = K + 1: the last id is the null (unconditional) class."""
    n = config["num_class_embeds"]
    if n is None:
        return 0
    if not 2 <= n <= emb_dim + 1:
        _refuse(where, "num_class_embeds", n, f"K classes and a last null class, 2 <= K + 1 <= {emb_dim + 1}")
    return n - 1


def schedule_of(betas: Tensor, where: str) -> ScheduleSpec:
    """The named undiffuse schedule whose betas these are (a run folder names its schedule)."""
    betas = betas.double()
    T = len(betas)
    for name in SCHEDULES:
        for zero_snr in (False, True):
            ours = make_schedule(name, T, zero_snr).betas
            # float32 betas; a zero-SNR schedule's last beta is 1 in diffusers and 1 - 1e-9-ish here
            if torch.allclose(ours[:-1], betas[:-1], rtol=1e-4, atol=1e-7) and abs(ours[-1] - betas[-1]) < 1e-3:
                return ScheduleSpec(name, T, zero_snr)
    raise CheckpointError(f"{where}: its {T} betas match none of undiffuse's schedules ({', '.join(SCHEDULES)}, "
                          "with or without zero terminal SNR, at that T)")


def prediction_of(prediction_type: str, where: str) -> str:
    ours = {v: k for k, v in PREDICTION_TYPES.items()}
    if prediction_type not in ours:
        _refuse(where, "prediction_type", prediction_type, f"one of {', '.join(ours)}")
    return ours[prediction_type]


# --- weights -----------------------------------------------------------------------------------------

def _modules(cfg: UNetConfig):
    """(our module, its UNet2DModel counterpart, kind) for every module with weights but the classes."""
    levels = len(cfg.mults)
    yield from (("conv_in", "conv_in", "plain"), ("time_mlp.0", "time_embedding.linear_1", "plain"),
                ("time_mlp.2", "time_embedding.linear_2", "plain"))
    for i in range(levels):
        for j in range(cfg.blocks):
            yield f"down.{i}.blocks.{j}", f"down_blocks.{i}.resnets.{j}", "res"
            if i in cfg.attention:
                yield f"down.{i}.attns.{j}", f"down_blocks.{i}.attentions.{j}", "attn"
        if i < levels - 1:
            yield f"downsample.{i}", f"down_blocks.{i}.downsamplers.0.conv", "plain"
    yield from (("mid.blocks.0", "mid_block.resnets.0", "res"), ("mid.attns.0", "mid_block.attentions.0", "attn"),
                ("mid.blocks.1", "mid_block.resnets.1", "res"))
    for u in range(levels):  # our up levels, like diffusers', run from the lowest resolution
        for j in range(cfg.blocks + 1):
            yield f"up.{u}.blocks.{j}", f"up_blocks.{u}.resnets.{j}", "res"
            if levels - 1 - u in cfg.attention:
                yield f"up.{u}.attns.{j}", f"up_blocks.{u}.attentions.{j}", "attn"
        if u < levels - 1:
            yield f"upsample.{u}.1", f"up_blocks.{u}.upsamplers.0.conv", "plain"
    yield from (("norm_out", "conv_norm_out", "plain"), ("conv_out", "conv_out", "plain"))


def _leaves(cfg: UNetConfig, keys) -> list[tuple[str, str, str]]:
    """(our tensor, theirs, how): how is "same", "linear" (our 1x1 conv is their Linear) or one of QKV."""
    modules = {ours: (theirs, kind) for ours, theirs, kind in _modules(cfg)}
    leaves = []
    for key in keys:
        if not key.startswith("context."):  # the class embedding maps as a whole (class_table)
            module, sub, param = _split(key, modules)
            leaves += _leaf(key, *modules[module], sub, param)
    return leaves


def _split(key: str, modules: dict) -> tuple[str, str, str]:
    """'down.0.blocks.1.norm1.weight' -> ('down.0.blocks.1', 'norm1', 'weight'): the longest known module."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n]), ".".join(parts[n:-1]), parts[-1]
    raise KeyError(f"no diffusers counterpart for {key}")


def _leaf(key: str, theirs: str, kind: str, sub: str, param: str) -> list[tuple[str, str, str]]:
    if kind == "res":
        return [(key, f"{theirs}.{RES[sub]}.{param}", "same")]
    if kind == "attn" and sub == "qkv":
        return [(key, f"{theirs}.{q}.{param}", q) for q in QKV]
    if kind == "attn":
        return [(key, f"{theirs}.{'group_norm' if sub == 'norm' else 'to_out.0'}.{param}",
                 "same" if sub == "norm" else "linear")]
    return [(key, f"{theirs}.{param}", "same")]


def to_diffusers_state(net) -> dict[str, Tensor]:
    """The UNet2DModel state dict of an adm U-Net (its weights copied, contiguous, on the CPU)."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    out = {}
    for ours, theirs, how in _leaves(net.cfg, state):
        t = state[ours]
        if how in QKV:
            t = t.reshape(3, -1, *t.shape[1:])[QKV.index(how)]
        out[theirs] = (t.flatten(1) if t.ndim == 4 and how != "same" else t).contiguous().clone()
    if net.context is not None:
        out["class_embedding.weight"] = class_table(net)
    return out


@torch.no_grad()
def class_table(net) -> Tensor:
    """The embedding of each one-hot class as the run computes it, and its null embedding last."""
    k = net.cfg.context_dim
    rows = net.context.mlp(torch.eye(k, device=net.context.null.device))
    return torch.cat([rows, net.context.null[None]]).cpu().contiguous()


def from_diffusers_state(cfg: UNetConfig, keys, state: dict[str, Tensor], flip_sin_to_cos: bool) -> dict[str, Tensor]:
    """Our state dict (for the tensor names `keys` of UNet(cfg)) from a UNet2DModel's."""
    parts: dict[str, list[Tensor]] = {}
    used, out = set(), {}
    for ours, theirs, how in _leaves(cfg, keys):
        used.add(theirs)
        parts.setdefault(ours, []).append(state[theirs])  # to_q, to_k, to_v in the order of our qkv
        out[ours] = (how, torch.cat(parts[ours]))
    out = {k: t[:, :, None, None] if how != "same" and t.ndim == 2 else t for k, (how, t) in out.items()}
    if flip_sin_to_cos:  # their embedding is [cos, sin]: swap the halves of the first layer's inputs
        out["time_mlp.0.weight"] = out["time_mlp.0.weight"].roll(cfg.base // 2, dims=1)
    if cfg.context_dim:
        used.add("class_embedding.weight")
        out.update(context_from_table(state["class_embedding.weight"]))
    unused = sorted(set(state) - used)
    if unused:
        raise CheckpointError(f"the UNet2DModel weights hold tensors undiffuse has no place for: {unused[0]}")
    return out


def context_from_table(table: Tensor) -> dict[str, Tensor]:
    """A ContextEmbedding MLP that maps one-hot class k to row k exactly; the last row is the null."""
    k, dim = table.shape[0] - 1, table.shape[1]
    first = torch.zeros(dim, k)
    first[torch.arange(k), torch.arange(k)] = CLASS_GAIN
    second = torch.zeros(dim, dim)
    second[:, :k] = table[:k].T.float() / CLASS_GAIN
    return {"context.mlp.0.weight": first, "context.mlp.0.bias": torch.zeros(dim),
            "context.mlp.2.weight": second, "context.mlp.2.bias": torch.zeros(dim), "context.null": table[k].clone()}
