"""Full fine-tuning: every parameter trains (the adapter is the whole model)."""

from __future__ import annotations

from typing import Any

from layered.tuning.config import TuneConfig


def apply(model: Any, config: TuneConfig) -> Any:
    for param in model.parameters():
        param.requires_grad = True
    return model
