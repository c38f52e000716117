"""What every local generator checks the same way: budgets, chat messages, saveable models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, overload

from layered import models
from layered.errors import ConfigError, ContextOverflowError
from layered.generation.guards import DecodingGuard
from layered.prompts.injection import control_tokens, defuse_control_tokens
from layered.types import Prompt


def check_budget(max_new_tokens: int, context_window: int) -> None:
    """One-line errors for an answer budget that cannot fit the window."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if context_window <= max_new_tokens:
        raise ConfigError(f"context_window ({context_window}) must exceed max_new_tokens ({max_new_tokens})")


class AnswerBudget:
    """``max_new_tokens`` as a validated attribute: every assignment, in ``__init__`` or later
    (the CLI's ``--max-new-tokens``), is checked against the owner's ``context_window`` when it
    has one (set that first), so a budget that cannot fit the window fails at once, in one line.
    """

    def __init__(self, *, window: str | None = "context_window") -> None:
        self.window = window

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> AnswerBudget: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> int: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> AnswerBudget | int:
        if obj is None:
            return self
        value: int = obj.__dict__[self.slot]
        return value

    def __set__(self, obj: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"max_new_tokens must be a whole number of tokens, got {value!r}")
        if self.window is None:
            if value < 1:
                raise ConfigError(f"max_new_tokens must be at least 1, got {value}")
        else:
            check_budget(value, getattr(obj, self.window))
        obj.__dict__[self.slot] = value


def check_fits(n_prompt: int, window: int, max_new_tokens: int) -> None:
    """Raise :class:`ContextOverflowError` when an ``n_prompt``-token prompt leaves no room for the answer."""
    budget = window - max_new_tokens
    if n_prompt > budget:
        raise ContextOverflowError(
            f"the prompt is {n_prompt} tokens but the model's {window}-token window leaves {budget} "
            f"after reserving {max_new_tokens} for the answer; shorten the question or lower k"
        )


def chat_messages(prompt: Prompt, tokenizer: Any = None) -> list[dict[str, str]]:
    """The prompt as chat-template messages, each content with ``tokenizer``'s control tokens
    (and the common ones of other templates) defused, so only the template opens and closes turns."""
    tokens = control_tokens(tokenizer)
    return [{"role": m.role, "content": defuse_control_tokens(m.content, tokens)} for m in prompt.messages]


def check_saveable(model_name: str) -> None:
    """A saved pipeline must name its model in a way that loads again: packaged, or a local path."""
    if model_name not in models.PACKAGED and not Path(model_name).exists():
        raise ConfigError(f"generator model {model_name!r} is not a packaged model or a local path; it cannot be saved")


#: The decoding settings every local generator takes, saves under these config keys and reads back.
DECODING_KEYS = ("max_new_tokens", "context_window", "temperature", "repetition_penalty", "seed", "loop_ngram", "whole_sentences")


class LocalDecoding:
    """What the local generators (transformers, llama.cpp) share: the model they name, an
    answer budget checked against the window on every assignment, the decoding settings, and
    the loop and length guard applied to every answer (``loop_ngram=None``: no loop check;
    ``whole_sentences=False``: stream raw pieces and keep a cut answer's last words)."""

    kind: str
    max_new_tokens = AnswerBudget()  # validated against context_window on every assignment

    def _set_decoding(self, model: str, *, max_new_tokens: int, context_window: int, temperature: float,
                      repetition_penalty: float, seed: int, loop_ngram: int | None, whole_sentences: bool) -> None:
        check_budget(max_new_tokens, context_window)
        self.model_name = model
        self.context_window = context_window
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self.seed = seed
        self.guard = DecodingGuard(ngram=loop_ngram, whole_sentences=whole_sentences)

    def _decoding_config(self) -> dict[str, Any]:
        """The shared part of ``config()``: kind, model and :data:`DECODING_KEYS` (refuses a model that cannot be saved)."""
        check_saveable(self.model_name)
        return {
            "kind": self.kind, "model": self.model_name, "max_new_tokens": self.max_new_tokens,
            "context_window": self.context_window, "temperature": self.temperature,
            "repetition_penalty": self.repetition_penalty, "seed": self.seed,
            "loop_ngram": self.guard.ngram, "whole_sentences": self.guard.whole_sentences,
        }
