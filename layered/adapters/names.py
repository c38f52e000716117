"""Reserved adapter names, the one list of tuning-method names, and the adapter-name check."""

from __future__ import annotations

import re
from typing import Literal, get_args

from layered.errors import ConfigError

#: The bare base model (no adapter); never the name of an installed adapter.
BASE = "base"
#: The name an adapter gets when none is given (``Pipeline.fit`` without ``name``).
DEFAULT = "default"

#: Every tuning method, in the order they are documented.
Method = Literal["lora", "ia3", "prefix", "bottleneck", "selective", "full"]
METHODS: tuple[str, ...] = get_args(Method)

#: Methods implemented with PEFT: they wrap the model and keep the base weights intact, so the
#: base model stays reachable (and, for LoRA, several adapters can share one base).
PEFT_METHODS = frozenset({"lora", "ia3", "prefix"})

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def check_name(name: str) -> str:
    """``name`` if it can name an adapter (an identifier-like word other than ``"base"``)."""
    if not isinstance(name, str) or not _NAME.match(name) or name == BASE:
        raise ConfigError(f"adapter names are short words of letters, digits, '-' or '_' (not {BASE!r}); got {name!r}")
    return name
