"""Flag retrieved text that tries to give the model instructions (indirect prompt injection).

Delimiting (see :mod:`layered.prompts.grounding`) is the defence; this is the alarm: a
passage matching one of these patterns is reported in ``Answer.metadata["injection_suspects"]``
so callers can log, review or drop it. Patterns follow OWASP LLM01 examples.
"""

from __future__ import annotations

import re
from typing import Sequence

from layered.types import Hit

_PATTERNS = [
    r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(previous|prior|above|earlier|all|any|system)\b[^.\n]{0,20}\b(instructions?|prompts?|rules?|messages?)",
    r"\byou are now\b",
    r"\b(new|updated) (system )?instructions?\s*:",
    r"\b(reveal|print|show|repeat)\b[^.\n]{0,30}\b(system prompt|instructions)\b",
    r"\bact as (an? )?(unrestricted|jailbroken|different)\b",
    r"</?\s*(passage|references|system|assistant|user|im_start|im_end)\b",
    r"<\|im_(start|end)\|>",
]
_INJECTION = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)


def looks_like_injection(text: str) -> bool:
    return bool(_INJECTION.search(text))


def injection_suspects(context: Sequence[Hit]) -> list[dict[str, object]]:
    """``[{"number": n, "chunk_id": ...}]`` for each passage that looks like an injection."""
    return [
        {"number": n, "chunk_id": hit.chunk.id}
        for n, hit in enumerate(context, start=1)
        if looks_like_injection(hit.chunk.text)
    ]
