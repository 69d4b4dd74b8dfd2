"""Fixtures shared by the test modules."""
import importlib.util
import os

import pytest

from undiffuse.cli import main

from cli_helpers import TRAIN

# What --precision auto means in this test session and the commands it starts: fp32, so that two runs
# of one test never differ by a timing probe's verdict. tests/test_precision.py unsets it to test auto.
os.environ["UNDIFFUSE_PRECISION"] = "fp32"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny conditional run on the 8x8 digits at 16x16 (10 classes), trained for 8 steps: a few seconds.
    Tests may add files to it (eval.json, ...) but must not change its weights or config."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *TRAIN, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def sr_run(tmp_path_factory):
    """A tiny upscale run (--task upscale --factor 2): the 8x8 digits at 16x16 from their 8x8 halves,
    60 steps: seconds. Tests must not change it."""
    from undiffuse.training import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("sr") / "run"
    cfg = TrainConfig.flat(data="digits", image_size=16, steps=60, batch_size=32, model="tiny", grids=1, seed=3,
                           task="upscale", factor=2)
    Trainer.create(cfg, run).train(progress=False)
    return run


def text_extra_installed() -> bool:
    from undiffuse.conditions.text import MODEL_PACKAGE

    return all(importlib.util.find_spec(m) for m in ("tokenizers", MODEL_PACKAGE))


@pytest.fixture(scope="session")
def encoder():
    """The text extra's sentence encoder, loaded once for every test module that needs it."""
    if not text_extra_installed():
        pytest.skip("the text extra is not installed: pip install 'undiffuse[text]'")
    from undiffuse.conditions.text import TextEncoder

    return TextEncoder.load("cpu")
