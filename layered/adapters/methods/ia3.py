"""IA3 (Liu et al., 2022): learned scaling vectors on keys, values and the MLP."""

from __future__ import annotations

from typing import Any

from layered.adapters.config import AdapterConfig
from layered.adapters.names import DEFAULT


def apply(model: Any, config: AdapterConfig, name: str = DEFAULT) -> Any:
    from peft import IA3Config, get_peft_model

    peft_config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"], task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config, adapter_name=name)
