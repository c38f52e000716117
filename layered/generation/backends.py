"""Switching a generator to another backend: the llama.cpp twin of a transformers generator."""

from __future__ import annotations

from typing import Any

from layered.errors import ConfigError
from layered.protocols import Generator

#: The switches known: (from, to).
SWITCHES = (("transformers", "llamacpp"),)


def switch(generator: Generator, backend: str, **options: Any) -> Generator:
    """``generator`` answering with ``backend``: the generator itself when it already is one.

    ``"llamacpp"`` from a transformers generator (:meth:`layered.Pipeline.serve_with`): llama.cpp
    on the same GGUF (its weights widened to F16 unless ``precision="native"``) with every LoRA
    adapter exported to a GGUF LoRA and switched per request like the transformers ones
    (4.1-4.3x the tokens/s here, the same greedy answers; ``options`` go to
    ``LlamaCppGenerator.from_generator``).
    """
    current = str(getattr(generator, "kind", type(generator).__name__))  # a user's generator may have no kind
    if backend == current:
        return generator
    if (current, backend) not in SWITCHES:
        known = ", ".join(f"{a} -> {b}" for a, b in SWITCHES)
        raise ConfigError(f"cannot switch a {current} generator to {backend!r} (known: {known})")
    from layered.generation.llamacpp_generator import LlamaCppGenerator

    return LlamaCppGenerator.from_generator(generator, **options)


def set_llamacpp_options(generator: Any, *, parallel: int | None = None, ignore_eos: bool = False) -> None:
    """``layered serve``'s llama.cpp-only options, set before the model loads: ``parallel``
    sequences decoded together, ``ignore_eos`` (load tests with a fixed answer length)."""
    wanted = [name for name, value in (("--parallel", parallel is not None), ("--ignore-eos", ignore_eos)) if value]
    if wanted and getattr(generator, "kind", None) != "llamacpp":
        raise ConfigError(f"{wanted[0]} is a llama.cpp backend option; add --backend llamacpp")
    if parallel is not None:
        generator.parallel = parallel
    if ignore_eos:
        generator.ignore_eos = True
