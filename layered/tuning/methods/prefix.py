"""Prefix tuning (Li & Liang, 2021): trained key/value prefixes at every layer."""

from __future__ import annotations

from typing import Any

from layered.tuning.config import TuneConfig


def apply(model: Any, config: TuneConfig, name: str = "default") -> Any:
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=config.virtual_tokens, task_type="CAUSAL_LM"), adapter_name=name)
