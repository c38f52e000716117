"""The forgetting check: perplexity on shipped general text, reported by every fit."""

from __future__ import annotations

import math

import pytest

from layered import Pipeline
from layered.errors import InputError
from layered.evaluation.perplexity import general_text, perplexity
from layered.tuning.config import TuneConfig
from layered.types import Example


def test_the_general_text_ships_with_the_package():
    text = general_text()
    assert len(text) > 15_000 and "Naomi" in text and "Nineveh" in text


def test_perplexity_equals_exp_of_the_models_own_loss_on_one_window(tiny_model_dir, smol_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text = general_text()[:2000]
    ids = smol_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :100]
    with torch.no_grad():
        expected = math.exp(float(model(input_ids=ids, labels=ids).loss))
    assert perplexity(model, smol_tokenizer, text, max_tokens=100, window=99) == pytest.approx(expected, rel=1e-4)
    windows = perplexity(model, smol_tokenizer, text, max_tokens=100, window=30)
    assert windows != pytest.approx(expected, rel=1e-6) and 0.5 * expected < windows < 2 * expected  # shorter contexts
    with pytest.raises(InputError, match="at least two tokens"):
        perplexity(model, smol_tokenizer, "a", max_tokens=1)


def test_every_fit_reports_base_and_tuned_perplexity(tiny_generator, tmp_path):
    data = [Example(question=f"Code for item {i}?", answer=f"X{i % 3}.") for i in range(20)]
    base = perplexity(tiny_generator.model, tiny_generator.tokenizer, general_text())
    report = Pipeline(generator=tiny_generator).fit(
        data[:16], val=data[16:], config=TuneConfig(learning_rate=5e-2, max_steps=10, batch_size=8), out_dir=tmp_path, progress=False,
    )
    assert report.forgetting.base == pytest.approx(base, rel=1e-6)
    assert report.forgetting.tuned != report.forgetting.base  # the tuned model was measured, not the base again
    assert "perplexity on general text" in str(report.forgetting)
