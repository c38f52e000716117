"""Pipeline.fit on a tiny real Llama: trains what it serves, saves the adapter, refuses bad input early."""

from __future__ import annotations

import pytest

from layered import Pipeline
from layered.errors import ConfigError, ContextOverflowError
from layered.tuning.config import TuneConfig
from layered.tuning.data import EmptyDatasetError
from layered.types import Example

TRAIN = [Example(question=f"What is the code for item {i}?", answer=f"The code is X{i % 3}.") for i in range(24)]
VAL = [Example(question=f"What is the code for item {i}?", answer=f"The code is X{i % 3}.") for i in range(24, 30)]


def test_fit_lowers_validation_loss_and_the_adapter_survives_save_load(tiny_generator, tmp_path):
    pipe = Pipeline(generator=tiny_generator)
    config = TuneConfig(rank=8, learning_rate=1e-2, max_steps=30, batch_size=8, eval_every=10, checkpoint_every=10)
    report = pipe.fit(TRAIN, val=VAL, config=config, out_dir=tmp_path / "run", progress=False)
    assert report.steps == 30 and report.val_losses[-1][1] < report.val_losses[0][1] - 0.2
    before_save = pipe.ask("What is the code for item 40?").text
    pipe.save(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "generator" / "adapter.safetensors").is_file()
    loaded = Pipeline.load(tmp_path / "tuned")
    assert loaded.generator.adapter["method"] == "lora"
    assert loaded.ask("What is the code for item 40?").text == before_save
    with pytest.raises(ConfigError, match="already carries an adapter"):
        loaded.fit(TRAIN, val=VAL, config=config, out_dir=tmp_path / "again", progress=False)


def test_bad_input_is_refused_before_training(tiny_generator, tmp_path):
    pipe = Pipeline(generator=tiny_generator)
    with pytest.raises(EmptyDatasetError, match="no training examples"):
        pipe.fit([], out_dir=tmp_path)
    with pytest.raises(EmptyDatasetError, match="validation set is empty"):
        pipe.fit(TRAIN, val=[], out_dir=tmp_path)
    with pytest.raises(EmptyDatasetError, match="cannot fill train and validation"):
        pipe.fit(TRAIN[:1], out_dir=tmp_path)
    with pytest.raises(ContextOverflowError, match="1 training example"):
        pipe.fit([*TRAIN, Example(question="long?", answer="word " * 3000)], val=VAL, out_dir=tmp_path)
    assert tiny_generator.adapter is None  # nothing was attached or trained
