"""LoRA (Hu et al., 2021): W + (alpha/r) B A on the target projections; DoRA as an option."""

from __future__ import annotations

from typing import Any

from layered.adapters.config import AdapterConfig
from layered.adapters.names import DEFAULT


def peft_config(config: AdapterConfig) -> Any:
    """The PEFT ``LoraConfig`` for ``config``."""
    from peft import LoraConfig

    return LoraConfig(
        # PEFT annotates lora_alpha as int but scales by alpha / r in floating point: a float alpha is used as given.
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,  # type: ignore[arg-type]
        target_modules=list(config.target_modules), use_dora=config.dora, task_type="CAUSAL_LM",
    )


def apply(model: Any, config: AdapterConfig, name: str = DEFAULT) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_config(config), adapter_name=name)
