"""The noise predictor: a U-Net over (x_t, t, condition).

Residual blocks (GroupNorm, SiLU, 3x3 conv) at each resolution, halved by strided convs and doubled
back by nearest upsampling, with skip connections between the two paths; self-attention at the
lowest resolutions. The step t enters through a sinusoidal embedding and an MLP; the context
(class one-hot, attributes, mixtures) through `conditions.ContextEmbedding`; a text prompt
(`text_dim` > 0) through `conditions.prompt`: its pooled embedding is added to the time embedding and
cross-attention after every self-attention reads its tokens. A super-resolution network
(`cond_channels` > 0) takes the upsampled low-resolution image as extra input channels and its
augmentation level through a small MLP added to the time embedding (`conditions.lowres`); a distilled
student (`guidance_input`) takes its guidance scale the same way (`conditions.scale`). How they reach each
block is the config's `block_style`:

    film  the context embedding scales the normalised features, the time embedding shifts them,
          h <- (1 + c) * h + t (the course notebook's `c * h + t` generalised); mid block res-attn-res-attn
    adm   the class is added to the time embedding and one SiLU + Linear of the sum gives both,
          h <- (1 + scale) * h + shift (Dhariwal & Nichol 2021's scale-shift norm); mid block res-attn-res.
          Block for block what diffusers' UNet2DModel computes with resnet_time_scale_shift="scale_shift",
          so these runs export exactly (interop/).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .errors import UsageError
from .memory import require

from .conditions import ContextEmbedding
from .conditions.condition import Condition
from .conditions.prompt import CrossAttention, PromptContext, PromptEmbedding
from .conditions.lowres import LowRes
from .conditions.scale import EMBED_STRETCH


CONTEXT_MODES = ("scale", "add", "both")
BLOCK_STYLES = ("film", "adm")
PATCHES = (1, 2, 4)


@dataclass(frozen=True)
class UNetConfig:
    channels: int = 1  # image channels in and out
    base: int = 32  # feature channels at full resolution
    mults: tuple[int, ...] = (1, 2, 2)  # channel multiplier per level; each level after the first halves H, W
    blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention: tuple[int, ...] = (2,)  # levels (0 = full resolution) with self-attention
    head_channels: int = 32  # channels per attention head
    context_dim: int = 0  # length of the context vector; 0 = unconditional
    groups: int = 8  # GroupNorm groups
    dropout: float = 0.0
    # How the context embedding c reaches the blocks: "scale" (FiLM, h <- (1 + c) h + t, the course
    # notebook's c * h + t generalised), "add" (ADM: c is added to the time embedding, h <- h + (t + c)),
    # or "both". New runs get recipe.CONTEXT_MODE; "scale" is what runs written before this field used.
    # Film blocks only: adm blocks always add the class to the time embedding.
    context_mode: str = "scale"
    # The residual blocks (see the module docstring): "film" is what every run written before this
    # field used; "adm" maps one to one onto diffusers' UNet2DModel.
    block_style: str = "film"
    # Text prompts: the width of the sentence encoder's states (conditions.text.WIDTH), 0 = no text.
    # Exclusive with context_dim: a run is conditioned on classes or on text, not both.
    text_dim: int = 0
    # Super-resolution: channels of the upsampled low-res image concatenated to x_t, 0 = none.
    cond_channels: int = 0
    # A patch stem: the image's patch x patch tiles become channels before the U-Net (pixel unshuffle)
    # and are put back after it (pixel shuffle), so that its levels run at 1/patch of the resolution
    # with patch^2 times the input channels; 1 = none (every run written before this field).
    patch: int = 1
    # A distilled student (training/distill.py): the guidance scale is an input, embedded as the step
    # is and added to the time embedding, so that one pass gives the guided prediction.
    guidance_input: bool = False

    def __post_init__(self):
        object.__setattr__(self, "mults", tuple(self.mults))
        object.__setattr__(self, "attention", tuple(self.attention))
        for name in ("channels", "base", "blocks", "head_channels", "groups"):
            if getattr(self, name) < 1:
                raise UsageError(f"unet {name} must be >= 1")
        if not self.mults or min(self.mults) < 1:
            raise UsageError("unet mults must be positive integers")
        if self.context_mode not in CONTEXT_MODES:
            raise UsageError(f"unknown unet context_mode {self.context_mode!r}; choose one of {', '.join(CONTEXT_MODES)}")
        if self.block_style not in BLOCK_STYLES:
            raise UsageError(f"unknown unet block_style {self.block_style!r}; choose one of {', '.join(BLOCK_STYLES)}")
        if self.text_dim < 0:
            raise UsageError("unet text_dim must be >= 0")
        if self.cond_channels < 0:
            raise UsageError("unet cond_channels must be >= 0")
        if self.patch not in PATCHES:
            raise UsageError(f"unet patch must be one of {', '.join(map(str, PATCHES))}, got {self.patch}")
        if self.text_dim and self.context_dim:
            raise UsageError("a U-Net is conditioned on classes (context_dim) or on text (text_dim), not both")
        if any(c % self.groups for c in self.level_channels):
            raise UsageError(f"every level's channels {self.level_channels} must divide by groups={self.groups}")

    @property
    def level_channels(self) -> list[int]:
        return [self.base * m for m in self.mults]

    @property
    def scaled(self) -> bool:
        """Whether the blocks take the context embedding as a separate FiLM scale."""
        return self.context_dim > 0 and self.block_style == "film" and self.context_mode != "add"

    @property
    def added(self) -> bool:
        """Whether the context embedding is added to the time embedding."""
        return self.context_dim > 0 and (self.block_style == "adm" or self.context_mode != "scale")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.mults) - 1)

    @property
    def multiple(self) -> int:
        """The side of an image must be a multiple of this (it is padded to one): every level halves
        it, after the patch stem divided it."""
        return self.downsampling * self.patch

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style position encoding of the step t (Vaswani et al. 2017, sec. 3.5). (B,) -> (B, dim)"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-conv layers around a skip; the embeddings modulate the second norm's output.

    film: h <- (1 + scale(c)) * h + shift(t), both plain Linears of their own embedding.
    adm:  (scale, shift) = Linear(SiLU(t + c)), h <- (1 + scale) * h + shift.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, scaled: bool, groups: int, dropout: float,
                 style: str = "film"):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        # Layers are created in the order runs written before block_style had, so that a seed still
        # draws the same initial film network.
        if style == "adm":
            self.scale_shift = nn.Linear(emb_dim, 2 * c_out)
        else:
            self.shift = nn.Linear(emb_dim, c_out)  # from the time embedding
            self.scale = nn.Linear(emb_dim, c_out) if scaled else None  # from the context embedding
        self.style = style
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, t_emb: Tensor, c_emb: Tensor | None) -> Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        h = self._modulate(h, t_emb, c_emb)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h

    def _modulate(self, h: Tensor, t_emb: Tensor, c_emb: Tensor | None) -> Tensor:
        if self.style == "adm":
            scale, shift = self.scale_shift(F.silu(t_emb))[:, :, None, None].chunk(2, dim=1)
            return h * (1 + scale) + shift
        if self.scale is not None and c_emb is not None:
            h = h * (1 + self.scale(c_emb)[:, :, None, None])
        return h + self.shift(t_emb)[:, :, None, None]


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # each (B, heads, HW, c/heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """The residual blocks of one resolution, each followed by attention where `attends` says so."""

    def __init__(self, c_ins: list[int], c_out: int, attends: list[bool], cfg: UNetConfig, emb_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(c, c_out, emb_dim, cfg.scaled, cfg.groups, cfg.dropout, cfg.block_style) for c in c_ins
        )
        self.attns = nn.ModuleList(
            Attention(c_out, cfg.head_channels, cfg.groups) if attend else nn.Identity() for attend in attends
        )
        if cfg.text_dim:  # only text networks have this list: other runs' weights keep their names
            self.cross = nn.ModuleList(
                CrossAttention(c_out, cfg.text_dim, cfg.head_channels, cfg.groups) if attend else nn.Identity()
                for attend in attends
            )

    def steps(self):
        """(block, attention, cross-attention or None) in order."""
        cross = self.cross if hasattr(self, "cross") else [None] * len(self.blocks)
        return zip(self.blocks, self.attns, cross)


class UNet(nn.Module):
    """eps_theta(x_t, t, condition) (or the x0 or v it was trained to predict)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        # Gradient checkpointing: keep only each block's input in training and recompute its inside
        # in the backward pass (Chen et al. 2016): less activation memory for large images, ~30% slower.
        self.grad_checkpointing = False
        chans = cfg.level_channels
        emb_dim = 4 * cfg.base
        self.time_mlp = nn.Sequential(nn.Linear(cfg.base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.context = ContextEmbedding(cfg.context_dim, emb_dim) if cfg.context_dim else None
        self.prompt = PromptEmbedding(cfg.text_dim, emb_dim) if cfg.text_dim else None
        if cfg.cond_channels:  # the augmentation level of the low-res image, as the step is embedded
            self.aug_mlp = nn.Sequential(nn.Linear(cfg.base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.guidance_input:  # the last layer starts at zero: a student starts as its teacher's conditional branch
            self.scale_mlp = nn.Sequential(nn.Linear(cfg.base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.scale_mlp[-1].weight)
            nn.init.zeros_(self.scale_mlp[-1].bias)
        self.conv_in = nn.Conv2d((cfg.channels + cfg.cond_channels) * cfg.patch ** 2, chans[0], 3, padding=1)

        # Encoder: remember the channels of every feature map kept for a skip connection.
        skips, c = [chans[0]], chans[0]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, c_out in enumerate(chans):
            self.down.append(Level([c] + [c_out] * (cfg.blocks - 1), c_out, [i in cfg.attention] * cfg.blocks,
                                   cfg, emb_dim))
            c = c_out
            skips += [c] * cfg.blocks
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)

        # film: res-attn-res-attn; adm: res-attn-res, as UNet2DModel's mid block
        self.mid = Level([c, c], c, [True, cfg.block_style == "film"], cfg, emb_dim)

        # Decoder: each block eats one skip, in reverse order.
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c_out in reversed(list(enumerate(chans))):
            c_ins = []
            for _ in range(cfg.blocks + 1):
                c_ins.append(c + skips.pop())
                c = c_out
            self.up.append(Level(c_ins, c_out, [i in cfg.attention] * len(c_ins), cfg, emb_dim))
            self.upsample.append(
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1))
                if i > 0 else nn.Identity()
            )

        self.norm_out = nn.GroupNorm(cfg.groups, c)
        self.conv_out = nn.Conv2d(c, cfg.channels * cfg.patch ** 2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Condition | None = None) -> Tensor:
        """x: (B, C, H, W) noisy images; t: (B,) or () integer steps; cond: what to draw, B rows
        (conditions/condition.py), None: unconditional. Its classes and prompt rows flagged null take
        the learned nulls; a super-resolution network needs its `low` part."""
        cond = cond or Condition()
        h_in, w_in = x.shape[-2:]
        x, aug = self._with_low(x, cond.low)
        x = _pad_to_multiple(x, self.cfg.multiple)
        x = F.pixel_unshuffle(x, self.cfg.patch) if self.cfg.patch > 1 else x
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        t_emb = self.time_mlp(sinusoidal_embedding(t, self.cfg.base))
        if aug is not None:
            t_emb = t_emb + self.aug_mlp(sinusoidal_embedding(aug.expand(x.shape[0]) * 1000, self.cfg.base))
        if self.cfg.guidance_input:
            t_emb = t_emb + self.scale_mlp(self._scale_embedding(cond, x.shape[0]))
        classes = cond.classes
        c_emb = None if self.context is None else \
            self.context(*((classes.vectors, classes.null) if classes else (None, None)), batch=x.shape[0])
        if c_emb is not None and self.cfg.added:
            t_emb = t_emb + c_emb  # the class shifts every block from the first step of training
        text = cond.prompt.text if cond.prompt is not None else None
        prompt = self.prompt(text, batch=x.shape[0]) if self.prompt is not None else None
        if prompt is not None:
            t_emb = t_emb + prompt.pooled

        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn, cross in level.steps():
                h = self._block(block, attn, cross, h, t_emb, c_emb, prompt)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for block, attn, cross in self.mid.steps():
            h = self._block(block, attn, cross, h, t_emb, c_emb, prompt)
        for level, up in zip(self.up, self.upsample):
            for block, attn, cross in level.steps():
                h = self._block(block, attn, cross, torch.cat([h, skips.pop()], dim=1), t_emb, c_emb, prompt)
            h = up(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        out = F.pixel_shuffle(out, self.cfg.patch) if self.cfg.patch > 1 else out
        return out[..., :h_in, :w_in]

    def _scale_embedding(self, cond: Condition, batch: int) -> Tensor:
        if cond.scale is None:
            raise UsageError("this model was distilled with guidance built in: it needs a guidance scale")
        return sinusoidal_embedding(cond.scale.value.expand(batch) * EMBED_STRETCH, self.cfg.base)

    def _with_low(self, x: Tensor, low: LowRes | None) -> tuple[Tensor, Tensor | None]:
        """x with the low-res image's channels concatenated, and its levels; (x, None) for other networks."""
        if not self.cfg.cond_channels:
            if low is not None:
                raise UsageError("this model is not a super-resolution model: it takes no low-resolution image")
            return x, None
        if low is None:
            raise UsageError("this model upscales: it needs a low-resolution image (undiffuse upscale)")
        if low.image.shape[1] != self.cfg.cond_channels or low.image.shape[-2:] != x.shape[-2:]:
            raise UsageError(f"the upsampled low-resolution image must be {self.cfg.cond_channels} x "
                             f"{x.shape[-2]} x {x.shape[-1]}, got {tuple(low.image.shape[1:])}")
        return torch.cat([x, low.image.to(x.dtype)], dim=1), low.level

    def _block(self, block: ResBlock, attn: nn.Module, cross: nn.Module | None, h: Tensor, t_emb: Tensor,
               c_emb: Tensor | None, prompt: PromptContext | None) -> Tensor:
        def run(h: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
            h = attn(block(h, t, c))
            return cross(h, prompt) if isinstance(cross, CrossAttention) else h
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(run, h, t_emb, c_emb, use_reentrant=False)
        return run(h, t_emb, c_emb)


def _pad_to_multiple(x: Tensor, m: int) -> Tensor:
    """Edge-pad H and W up to a multiple of m (e.g. 28 -> 32 when m = 8); the output is cropped back."""
    ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def require_network(cfg: UNetConfig, what: str, copies: int = 2) -> int:
    """Refuse (one line) a network whose `copies` fp32 copies of the weights would not fit, before it is
    built: its parameters are counted on the meta device, where nothing is allocated (a config.json
    edited to base 2048 asks for GBs). Returns the count."""
    with torch.device("meta"):
        n = count_parameters(UNet(cfg))
    require(f"{what} ({n / 1e6:,.0f}M parameters)", 4 * n * copies, hint="this is not a network of this machine's size")
    return n
