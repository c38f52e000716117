"""Prompt packing: render a template with ranked passages and earlier turns into the generator's budget.

:func:`pack_chat` renders the template and, when the generator declares a token budget
(:class:`~layered.protocols.TokenBudgeted`), drops old turns, passages and few-shot examples
in the order :func:`layered.prompts.conversation.pack` documents until the prompt fits.
What ``render()`` takes beyond the question and context (the few-shot selector's vector
space, the number of shots the budget leaves) is read once from its signature
(:func:`render_keywords`), never probed per call.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from layered.prompts.conversation import pack
from layered.protocols import PromptTemplate, TokenBudgeted, accepts_keywords
from layered.types import Hit, Message, Prompt

#: The optional keywords a template's ``render`` may take.
RENDER_KEYWORDS = ("embedder", "shots")


def render_keywords(template: PromptTemplate) -> frozenset[str]:
    """Which of :data:`RENDER_KEYWORDS` ``template.render`` takes."""
    return accepts_keywords(template.render, RENDER_KEYWORDS)


def render(
    template: PromptTemplate, question: str, hits: Sequence[Hit], variables: dict[str, Any], shots: int | None, *,
    keywords: frozenset[str] = frozenset(), embedder: Callable[[], Any] = lambda: None,
) -> Prompt:
    """``template`` rendered with ``hits``; ``embedder()`` (few-shot selection in the retriever's
    vector space) and ``shots`` are passed only to a template whose ``render`` takes them."""
    extra: dict[str, Any] = {}
    if "embedder" in keywords:
        extra["embedder"] = embedder()
    if "shots" in keywords:
        extra["shots"] = shots
    return template.render(question=question, context=hits, **extra, **variables)


def pack_chat(
    template: PromptTemplate, question: str, history: Sequence[Message], hits: Sequence[Hit], variables: dict[str, Any], *,
    budgeted: TokenBudgeted | None = None, keywords: frozenset[str] = frozenset(), embedder: Callable[[], Any] = lambda: None,
) -> Prompt:
    """Render ``question`` after ``history`` with ``hits`` (best first), fit to ``budgeted``'s
    prompt budget (no budget: everything, as rendered)."""
    return pack(lambda kept, shots: render(template, question, kept, variables, shots, keywords=keywords, embedder=embedder),
                history=history, hits=hits, budget=None if budgeted is None else int(budgeted.prompt_budget),
                count=None if budgeted is None else budgeted.count_tokens)
