"""``max_new_tokens`` is checked on every assignment, by every generator (construction no longer
the only gate): the CLI's ``--max-new-tokens`` and ``layered compare`` set it after loading."""

from __future__ import annotations

import pytest

from layered.connectors.openai import OpenAIGenerator
from layered.errors import ConfigError
from layered.generation.llamacpp_generator import LlamaCppGenerator
from layered.generation.transformers_generator import TransformersGenerator


def _generators() -> list:
    # Construction loads no model: these are cheap, and real.
    return [TransformersGenerator(max_new_tokens=12, context_window=64), LlamaCppGenerator(max_new_tokens=12, context_window=64),
            OpenAIGenerator("served", max_new_tokens=12)]


@pytest.mark.parametrize("generator", _generators(), ids=lambda g: g.kind)
def test_assignment_is_validated_and_a_refused_value_changes_nothing(generator):
    generator.max_new_tokens = 40
    assert generator.max_new_tokens == 40 and generator.config()["max_new_tokens"] == 40
    for bad in (0, -3, True, 2.5, "40"):
        with pytest.raises(ConfigError, match="max_new_tokens"):
            generator.max_new_tokens = bad
        assert generator.max_new_tokens == 40


@pytest.mark.parametrize("generator", _generators()[:2], ids=lambda g: g.kind)
def test_a_budget_that_fills_the_window_is_refused(generator):
    with pytest.raises(ConfigError, match=r"context_window \(64\) must exceed max_new_tokens \(64\)"):
        generator.max_new_tokens = 64
    assert generator.max_new_tokens == 12
    generator.max_new_tokens = 63  # one prompt token still fits


def test_construction_goes_through_the_same_check():
    with pytest.raises(ConfigError, match="must exceed"):
        TransformersGenerator(max_new_tokens=64, context_window=64)
    with pytest.raises(ConfigError, match="at least 1"):
        OpenAIGenerator("served", max_new_tokens=0)
    # A remote server knows its own window: only the lower bound is checked here.
    remote = OpenAIGenerator("served", max_new_tokens=12)
    remote.max_new_tokens = 100_000
    assert remote.max_new_tokens == 100_000
