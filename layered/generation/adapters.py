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
import re
from typing import Any, Iterator, Mapping

from layered.errors import ConfigError

BASE = "base"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def check_name(name: str) -> str:
    """``name`` if it can name an adapter (an identifier-like word other than ``"base"``)."""
    if not isinstance(name, str) or not _NAME.match(name) or name == BASE:
        raise ConfigError(f"adapter names are short words of letters, digits, '-' or '_' (not {BASE!r}); got {name!r}")
    return name


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def check_can_add(name: str, method: str, existing: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a second adapter unless every adapter, old and new, is LoRA, and a reused name."""
    check_name(name)
    if name in existing:
        raise ConfigError(f"an adapter named {name!r} is already installed")
    methods = {str(c.get("method")) for c in existing.values()} | {method}
    if existing and methods != {"lora"}:
        raise ConfigError(f"several adapters on one base must all be LoRA; this would mix {', '.join(sorted(methods))}")


def install(model: Any, name: str, config: Any, existing: Mapping[str, Mapping[str, Any]]) -> Any:
    """Add adapter ``name`` (fresh weights) for ``config`` (a TuneConfig); returns the model to use.

    ``existing`` maps the adapters already installed to their config dumps.
    """
    from layered.tuning.methods import apply_method

    check_can_add(name, config.method, existing)
    if not existing:
        return apply_method(model, config, name)
    from layered.tuning.methods.lora import peft_config

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
