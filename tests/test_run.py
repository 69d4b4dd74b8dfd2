"""config.json through its one reader and writer (run.py): round trips, folders of format 1, and a
CheckpointError naming the key for every kind of bad value, never a KeyError or a TypeError."""
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from undiffuse import checkpoint as ckpt
from undiffuse.cli import main
from undiffuse.errors import CheckpointError
from undiffuse.generation import generate, load_run
from undiffuse.run import FORMAT_VERSION, IN_RECORD, read_run, write_run
from undiffuse.training.record import options_of

FORMAT_1 = Path(__file__).parent / "data" / "format1_config.json"  # written by format 1, before context_mode
TINY = ["train", "--data", "digits", "--image-size", "16", "--steps", "2", "--batch-size", "8", "--model", "tiny",
        "--grids", "0", "--quiet"]


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    """A 2-step run whose U-Net has the shape FORMAT_1 describes (context mode scale)."""
    run = tmp_path_factory.mktemp("runs") / "scale"
    assert main([*TINY, "--context-mode", "scale", "--block-style", "film", "--out", str(run)]) == 0  # as format 1 ran
    return run


def _config(run: Path) -> dict:
    return json.loads((run / ckpt.CONFIG).read_text())


def test_a_record_round_trips_and_holds_each_fact_once(scale_run, tmp_path):
    record = read_run(scale_run)
    write_run(tmp_path, record)
    assert read_run(tmp_path) == record
    assert (tmp_path / ckpt.CONFIG).read_text() == (scale_run / ckpt.CONFIG).read_text()
    config = _config(scale_run)
    assert config["format_version"] == FORMAT_VERSION == 2
    assert not set(config["train"]) & set(IN_RECORD)  # the schedule, prediction, image size... only once
    assert config["schedule"] == {"name": "linear", "T": 1000, "zero_snr": False}
    assert (record.image_size, record.channels, record.unet.context_mode) == (16, 1, "scale")
    assert options_of(record, scale_run).options()["image_size"] == 16


def test_a_format_1_folder_samples_resumes_and_is_rewritten_only_when_it_changes(scale_run, tmp_path, capsys):
    run = shutil.copytree(scale_run, tmp_path / "old")
    shutil.copy(FORMAT_1, run / ckpt.CONFIG)
    record = read_run(run)
    assert record.unet.context_mode == "scale" and record.unet == read_run(scale_run).unet
    assert "schedule" not in record.train and record.train["batch_size"] == 8
    images = generate(load_run(run), 2, labels=[1, 2], steps=2)
    assert images.shape == (2, 1, 16, 16)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0  # done already: nothing to write
    assert (run / ckpt.CONFIG).read_bytes() == FORMAT_1.read_bytes()
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--quiet"]) == 0
    assert _config(run)["format_version"] == 2 and read_run(run).plan.steps == 3
    assert "step 2 of 3" in capsys.readouterr().out


def _set(path: str, value):
    def edit(config):
        *parents, key = path.split(".")
        target = config
        for p in parents:
            target = target[p]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    return edit


DELETE = object()


@pytest.mark.parametrize("edit,needle", [
    (_set("prediction", DELETE), "prediction must be one of eps, x0, v; it is missing"),
    (_set("prediction", "score"), "prediction must be one of eps, x0, v; got 'score'"),
    (_set("schedule.T", 1), "schedule.T must be an integer in [2, 100000]; got 1"),
    (_set("schedule.T", 100_001), "schedule.T must be an integer in [2, 100000]"),
    (_set("schedule.T", "1000"), "schedule.T must be an integer"),
    (_set("schedule.name", "square"), "schedule.name must be one of linear, cosine, sigmoid"),
    (_set("schedule.zero_snr", True), "prediction must be v or x0 for a zero-SNR schedule"),
    (_set("schedule", [1000]), "schedule must be a JSON object"),
    (_set("image_size", 4), "image_size must be an integer in [8, 1024]; got 4"),
    (_set("image_size", 4096), "image_size must be an integer in [8, 1024]"),
    (_set("image_size", 16.0), "image_size must be an integer"),
    (_set("channels", 2), "channels must be one of 1, 3; got 2"),
    (_set("channels", True), "channels must be one of 1, 3"),
    (_set("class_names", "0123"), "class_names must be a list of strings"),
    (_set("class_names", ["a"]), "unet.context_dim must be the number of class names, 1"),
    (_set("unet.base", "16"), "unet.base must be an integer in [1, 4096]"),
    (_set("unet.base", 12), "divide by groups=8"),
    (_set("unet.groups", 0), "unet.groups must be an integer in [1, 4096]; got 0"),
    (_set("unet.mults", []), "unet.mults must be a list of 1 to 10 integers in [1, 64]; got []"),
    (_set("unet.mults", "12"), "unet.mults must be a list of 1 to 10 integers"),
    (_set("unet.attention", [5]), "unet.attention must be a list of 0 to 2 integers in [0, 1]"),
    (_set("unet.dropout", 1.0), "unet.dropout must be a number in [0, 1)"),
    (_set("unet.context_mode", "mul"), "unet.context_mode must be one of scale, add, both"),
    (_set("unet.wings", 2), "unknown key unet.wings"),
    (_set("text", {"encoder": "all-MiniLM-L6-v2", "dim": 8, "max_tokens": 4}), "unet.text_dim must be text.dim, 8"),
    (_set("text", {"encoder": "all-MiniLM-L6-v2", "dim": 8}), "text.max_tokens must be an integer"),
    (_set("text", [384]), "text must be null or an object"),
    (_set("unet.text_dim", -1), "unet.text_dim must be an integer in [0, 100000]"),
    (_set("unet", None), "unet must be a JSON object; got None"),
    (_set("model_size", 3), "model_size must be a non-empty string"),
    (_set("data_source", DELETE), "data_source must be a non-empty string; it is missing"),
    (_set("num_images", 0), "num_images must be an integer in [1, 1000000000]"),
    (_set("plan.steps", 0), "plan.steps must be an integer"),
    (_set("plan.lr", float("nan")), "plan.lr must be a number"),
    (_set("plan.ema_decay", 1), "plan.ema_decay must be a number in [0, 1)"),
    (_set("plan.warmup", DELETE), "plan.warmup must be an integer in [0, 1000000000]; it is missing"),
    (_set("train", []), "train must be an object of options with scalar values"),
    (_set("train.steps", [2]), "train must be an object of options with scalar values"),
    (_set("train.data", "digits"), "train.data is held by the record itself"),
    (_set("finetuned_from", {"run": 3, "step": 1}), "finetuned_from.run must be a non-empty string"),
    (_set("finetuned_from", {"run": "x"}), "finetuned_from.step must be an integer"),
    (_set("format_version", 99), "incompatible version of undiffuse (format_version 99"),
    (_set("format_version", DELETE), "incompatible version"),
    (_set("seconds", 3), "unknown key seconds"),
])
def test_each_kind_of_bad_value_is_a_checkpoint_error_naming_the_key(scale_run, tmp_path, edit, needle):
    config = _config(scale_run)
    edit(config)
    (tmp_path / ckpt.CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        read_run(tmp_path)
    assert needle in str(e.value) and str(tmp_path / ckpt.CONFIG) in str(e.value)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("text,needle", [("[]", "must hold a JSON object, not list"), ("{", "is not valid JSON"),
                                         ('{"a": ' * 10_000, "is not valid JSON")])
def test_a_config_that_is_not_a_json_object_is_a_checkpoint_error(tmp_path, text, needle):
    (tmp_path / ckpt.CONFIG).write_text(text)
    with pytest.raises(CheckpointError, match=needle):
        read_run(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_run(tmp_path / "nope")


@pytest.mark.parametrize("key,value,needle", [("steps", "many", "steps must be an integer or none, got 'many'"),
                                              ("batch_size", 0, "batch_size must be positive"),
                                              ("precision", "fp8", "precision must be one of auto, fp32, bf16, fp16"),
                                              ("learning_rate", 1, "unknown training option(s): learning_rate")])
def test_bad_training_options_are_a_checkpoint_error_on_resume(scale_run, tmp_path, key, value, needle):
    config = _config(scale_run)
    config["train"][key] = value
    (tmp_path / ckpt.CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        options_of(read_run(tmp_path), tmp_path)
    assert needle in str(e.value) and "'train' section" in str(e.value)


def _leaves(value, prefix=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*prefix, k))
    yield prefix


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=3), st.just({}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_any_value_anywhere_is_read_or_refused_cleanly(scale_run, tmp_path_factory, data):
    config = _config(scale_run)
    paths = [p for p in _leaves(config) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        *parents, key = data.draw(st.sampled_from(paths))
        target = config
        for p in parents:
            if not isinstance(target.get(p), dict):  # an earlier draw replaced the section
                target[p] = {}
            target = target[p]
        target[key] = data.draw(_VALUES)
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / ckpt.CONFIG).write_text(json.dumps(config))
    try:
        options_of(read_run(folder), folder)
    except CheckpointError as e:
        assert len(str(e).splitlines()) == 1
