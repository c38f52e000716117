"""Named adapters on one base model: install, pick per request, read and write their weights.

Every tuning method can be the one adapter of a generator. Several adapters on one base
(switched per request) need LoRA: PEFT keeps the base weights intact and swaps which LoRA
pair is active, so switching costs nothing. ``"base"`` names the bare base model, reachable
whenever the adapters are PEFT ones (the others change the model's own weights).

Weights are read and written by PEFT's own state-dict functions for PEFT methods (keys
without the adapter name, so a file loads under any name) and as the trainable parameters
for the others.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

from layered.adapters.config import AdapterConfig
from layered.adapters.names import BASE, PEFT_METHODS, check_name
from layered.errors import ConfigError

__all__ = ["BASE", "check_can_add", "check_name", "install", "load_weights", "resolve", "serving", "weights"]


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def _check_container_name(name: str) -> None:
    """PEFT keeps each adapter's layers in torch ``ModuleDict``s keyed by the adapter's name, and
    a key that is one of their attributes (``items``, ``keys``, ``train``...) fails deep inside torch."""
    import torch

    if hasattr(torch.nn.ModuleDict(), name):
        raise ConfigError(f"adapter name {name!r} is an attribute of torch's module containers, where PEFT keeps adapters; choose another")


def check_can_add(name: str, method: str, existing: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a second adapter unless every adapter, old and new, is LoRA, and a reused name."""
    check_name(name)
    _check_container_name(name)
    if name in existing:
        raise ConfigError(f"an adapter named {name!r} is already installed")
    methods = {str(c.get("method")) for c in existing.values()} | {method}
    if existing and methods != {"lora"}:
        raise ConfigError(f"several adapters on one base must all be LoRA; this would mix {', '.join(sorted(methods))}")


def install(model: Any, name: str, config: AdapterConfig, existing: Mapping[str, Mapping[str, Any]]) -> Any:
    """Add adapter ``name`` (fresh weights) for ``config`` (an AdapterConfig or a TuneConfig); returns the model to use.

    ``existing`` maps the adapters already installed to their config dumps.
    """
    from layered.adapters.methods import apply_method

    check_can_add(name, config.method, existing)
    if not existing:
        return apply_method(model, config, name)
    from layered.adapters.methods.lora import peft_config

    model.add_adapter(name, peft_config(config))
    return model


def weights(model: Any, name: str) -> dict[str, Any]:
    """The tensors of adapter ``name``, keyed independently of its name."""
    if _is_peft(model):
        from peft import get_peft_model_state_dict

        return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_weights(model: Any, name: str, tensors: Mapping[str, Any]) -> None:
    """Copy saved ``tensors`` into adapter ``name``; a clear error when they do not fit."""
    expected = weights(model, name)
    mismatch = sorted(set(tensors) ^ set(expected)) or sorted(
        k for k in tensors if tuple(tensors[k].shape) != tuple(expected[k].shape)
    )
    if mismatch:
        raise ConfigError(f"the saved adapter {name!r} does not fit this model (first mismatch: {mismatch[0]})")
    import torch

    if _is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, dict(tensors), adapter_name=name)
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value)


def resolve(adapter: str | None, installed: Mapping[str, Mapping[str, Any]], default: str | None) -> str | None:
    """The installed adapter a request asking for ``adapter`` gets (None: the base model).

    ``None`` asks for ``default``; ``"base"`` for the bare base model, which only PEFT
    methods leave reachable; any other name must be installed.
    """
    if adapter is None:
        return default
    if adapter == BASE:
        if any(c.get("method") not in PEFT_METHODS for c in installed.values()):
            raise ConfigError("this generator's adapter changed the model's own weights; the base model is not available beside it")
        return None
    if adapter not in installed:
        known = ", ".join([BASE, *installed])
        raise ConfigError(f"no adapter named {adapter!r} (known: {known})")
    return adapter


@contextlib.contextmanager
def serving(model: Any, name: str | None) -> Iterator[None]:
    """Run the block with PEFT adapter ``name`` active (``None``: adapters off, the base model).

    A model without PEFT adapters serves itself, whatever the name (the caller checks it).
    """
    if not _is_peft(model):
        yield
    elif name is None:
        with model.disable_adapter():
            yield
    else:
        if model.active_adapter != name:
            model.set_adapter(name)
        yield
