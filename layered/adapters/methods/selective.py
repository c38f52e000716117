"""Selective tuning: only biases and norm weights, plus (optionally) the top-k decoder layers."""

from __future__ import annotations

import re
from typing import Any

from layered.adapters.config import AdapterConfig

_LAYER = re.compile(r"\blayers\.(\d+)\.")


def apply(model: Any, config: AdapterConfig) -> Any:
    n_layers = int(getattr(model.config, "num_hidden_layers", 0))
    top = set(range(n_layers - config.top_layers, n_layers))
    for name, param in model.named_parameters():
        m = _LAYER.search(name)
        param.requires_grad = name.endswith("bias") or "norm" in name or bool(m and int(m.group(1)) in top)
    return model
