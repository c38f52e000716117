"""Prefix tuning (Li & Liang, 2021): trained key/value prefixes at every layer."""

from __future__ import annotations

from typing import Any

from layered.adapters.config import AdapterConfig
from layered.adapters.names import DEFAULT


def apply(model: Any, config: AdapterConfig, name: str = DEFAULT) -> Any:
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=config.virtual_tokens, task_type="CAUSAL_LM"), adapter_name=name)
