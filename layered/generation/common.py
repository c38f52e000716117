"""What every local generator checks the same way: budgets, chat messages, saveable models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layered import models
from layered.errors import ConfigError, ContextOverflowError
from layered.prompts.injection import control_tokens, defuse_control_tokens
from layered.types import Prompt


def check_budget(max_new_tokens: int, context_window: int) -> None:
    """One-line errors for an answer budget that cannot fit the window."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if context_window <= max_new_tokens:
        raise ConfigError(f"context_window ({context_window}) must exceed max_new_tokens ({max_new_tokens})")


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
