"""What a request's JSON may say: every field checked before the pipeline sees it.

Contract: a function here either returns a typed request or raises :class:`InputError`
(the server answers 400); nothing a client sends can reach the pipeline as a keyword it
does not expect, a wrong type, or an unbounded token count. JSON nested too deeply for the
parser is refused here too, not as a ``RecursionError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from layered.errors import InputError
from layered.serving import openai_format as oai
from layered.types import Message

# Names the pipeline's ask() takes itself, or that the template fills: never prompt variables.
RESERVED_VARIABLES = frozenset({"question", "context", "k", "filters", "user", "adapter", "embedder", "shots", "variables",
                                "messages", "max_new_tokens"})


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or :class:`InputError` naming what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise InputError("the body is not valid JSON: it is nested too deeply") from None
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object")
    return body


@dataclass(frozen=True)
class TokenLimit:
    """``answer``: the longest answer the server gives (the generator's ``max_new_tokens``);
    ``ceiling``: the most a request may name at all (the context window). Between the two a
    request gets ``answer`` tokens at most, as OpenAI's ``max_tokens`` is an upper bound."""

    answer: int
    ceiling: int


def token_limit(generator: Any) -> TokenLimit | None:
    """The token limits of ``generator``, or None when it has no configurable answer length."""
    limit = getattr(generator, "max_new_tokens", None)
    if not isinstance(limit, int) or limit < 1:
        return None
    window = getattr(generator, "context_window", None)
    return TokenLimit(answer=limit, ceiling=max(limit, window if isinstance(window, int) else limit))


def _max_tokens(body: Mapping[str, Any], limit: TokenLimit | None) -> int | None:
    key = next((k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None), None)
    if key is None:
        return None
    value = body[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"'{key}' must be a positive integer, got {json.dumps(value)[:40]}")
    if limit is None:
        raise InputError(f"'{key}' cannot be set for this model; leave it out")
    if value > limit.ceiling:
        raise InputError(f"'{key}' is {value}; this model's context holds at most {limit.ceiling} tokens")
    return min(value, limit.answer)


def _k(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise InputError("'k' must be an integer from 1 to 100")
    return value


def _adapter(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InputError("'adapter' must be a string naming an adapter")
    return value


def _variables(value: Any) -> dict[str, str | int | float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError("'variables' must be an object of name -> string")
    out: dict[str, str | int | float] = {}
    for name, v in value.items():
        if not name.isidentifier():
            raise InputError(f"variable name {name[:40]!r} is not an identifier")
        if name in RESERVED_VARIABLES:
            raise InputError(f"'{name}' is not a prompt variable; use the request's own field for it")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise InputError(f"variable '{name}' must be a string or a number")
        out[name] = v
    return out


@dataclass(frozen=True)
class AskRequest:
    question: str
    k: int | None = None
    adapter: str | None = None
    max_tokens: int | None = None
    variables: dict[str, str | int | float] = field(default_factory=dict)


def ask_request(body: Mapping[str, Any], *, max_tokens_limit: TokenLimit | None) -> AskRequest:
    """A checked ``POST /ask`` body."""
    question = body.get("question")
    if not isinstance(question, str):
        raise InputError("'question' (a string) is required")
    return AskRequest(question=question, k=_k(body.get("k")), adapter=_adapter(body.get("adapter")),
                      max_tokens=_max_tokens(body, max_tokens_limit), variables=_variables(body.get("variables")))


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    model: str
    adapter: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    k: int | None = None
    variables: dict[str, str | int | float] = field(default_factory=dict)


LAYERED_FIELDS = ("variables", "k")


def chat_request(body: Mapping[str, Any], *, served: str, max_tokens_limit: TokenLimit | None) -> ChatRequest:
    """A checked ``POST /v1/chat/completions`` body (``model`` may name ``served:adapter``).

    The whole message list is kept (checked as :meth:`layered.Pipeline.chat` checks it). An
    optional ``"layered": {"variables": {...}, "k": n}`` object carries what ``/ask`` takes
    as ``variables`` and ``k``, checked by the same rules (e.g. ``{"audience": "patient"}``).
    """
    messages = oai.messages_of(body)
    model = body.get("model")
    adapter = oai.adapter_of(model, served)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InputError("'stream' must be true or false")
    extra = body.get("layered")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise InputError("'layered' must be an object with optional 'variables' and 'k'")
    unknown = [str(name)[:40] for name in extra if name not in LAYERED_FIELDS]
    if unknown:
        raise InputError(f"'layered' has unknown field(s) {', '.join(map(repr, unknown))}; it takes {', '.join(LAYERED_FIELDS)}")
    return ChatRequest(messages=messages, model=model or served, adapter=adapter, stream=stream,
                       max_tokens=_max_tokens(body, max_tokens_limit), k=_k(extra.get("k")),
                       variables=_variables(extra.get("variables")))
