"""LoRA (Hu et al., 2021): W + (alpha/r) B A on the target projections; DoRA as an option."""

from __future__ import annotations

from typing import Any

from layered.tuning.config import TuneConfig


def apply(model: Any, config: TuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(config.target_modules), use_dora=config.dora, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)
