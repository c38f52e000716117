"""Tuning methods, one small module each, all behind :func:`apply_method`.

Each method makes a model trainable in its own way and says which parameters form the
adapter (what is saved, in safetensors, instead of the whole model). The method names are
:data:`layered.adapters.names.METHODS`; this table has one entry for each.
"""

from __future__ import annotations

from typing import Any, Callable

from layered.adapters.config import AdapterConfig
from layered.adapters.names import DEFAULT, METHODS, PEFT_METHODS
from layered.errors import ConfigError

__all__ = ["PEFT_METHODS", "apply_method", "count_parameters", "trainable_state"]


def apply_method(model: Any, config: AdapterConfig, name: str = DEFAULT) -> Any:
    """Return the model prepared for ``config.method`` (PEFT-wrapped or with params frozen).

    ``name`` is the PEFT adapter name (other methods change the model itself and have no
    name). Seeds torch with ``config.seed`` first, so new adapter weights are the same every run.
    """
    import torch

    from layered.adapters.methods import bottleneck, full, ia3, lora, prefix, selective

    torch.manual_seed(config.seed)
    table: dict[str, Callable[..., Any]] = {
        "lora": lora.apply, "ia3": ia3.apply, "prefix": prefix.apply, "bottleneck": bottleneck.apply,
        "selective": selective.apply, "full": full.apply,
    }
    assert tuple(table) == METHODS, "every method in layered.adapters.names.METHODS has one module here"
    if config.method not in table:
        raise ConfigError(f"unknown method {config.method!r} (known: {', '.join(METHODS)})")
    if config.method in PEFT_METHODS:
        return table[config.method](model, config, name)
    return table[config.method](model, config)


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable parameters by name (the adapter), detached and contiguous."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
