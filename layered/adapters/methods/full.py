"""Full fine-tuning: every parameter trains (the adapter is the whole model)."""

from __future__ import annotations

from typing import Any

from layered.adapters.config import AdapterConfig


def apply(model: Any, config: AdapterConfig) -> Any:
    for param in model.parameters():
        param.requires_grad = True
    return model
