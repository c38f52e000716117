"""OpenAI chat-completions wire format: requests in, responses and stream chunks out.

Pure functions over JSON-ready dicts, so the HTTP layer stays thin and this stays testable.
A chat request is answered by the pipeline's ``chat``: the whole message list is the
conversation (the client sends the history; the server keeps none), the last user message
the question (the pipeline adds its own system prompt and retrieved passages; client system
messages are ignored); ``model`` may name an adapter as ``"<served-name>:<adapter>"``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Mapping

from layered.errors import InputError
from layered.prompts.conversation import checked_messages
from layered.types import Answer, Message


def messages_of(body: Mapping[str, Any]) -> tuple[Message, ...]:
    """The checked message list of a chat request (see :func:`~layered.prompts.conversation.checked_messages`)."""
    return checked_messages(body.get("messages"))


def adapter_of(model: Any, served: str) -> str | None:
    """The adapter a request's ``model`` names: ``served:adapter`` -> ``adapter``; ``served`` -> None."""
    if model is None or model == served:
        return None
    if isinstance(model, str) and model.startswith(served + ":") and len(model) > len(served) + 1:
        return model[len(served) + 1:]
    raise InputError(f"unknown model {model!r}; this server serves {served!r} (or {served}:<adapter>)")


def _passage(c: Any) -> dict[str, Any]:
    """One passage as JSON: its number in the prompt, ids, source, score and text.

    The text is the passage the requesting user's prompt held (retrieval already applied
    their access list), so showing it tells them nothing they could not retrieve.
    """
    return {"number": c.number, "chunk_id": c.chunk_id, "doc_id": c.doc_id, "source": c.source, "score": c.score,
            "text": c.text}


def passages(citations: Any) -> list[dict[str, Any]]:
    return [_passage(c) for c in citations]


def layered_extra(citations: Any, sources: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The ``layered`` object of a completion (or of a stream's final chunk): citations, every
    source passage with its text, and the JSON-ready metadata (refusal, grounding, ...)."""
    return {"citations": passages(citations), "sources": passages(sources),
            "metadata": {k: v for k, v in metadata.items() if _is_json(v)}}


def _metadata(answer: Answer) -> dict[str, Any]:
    return {k: v for k, v in answer.metadata.items() if _is_json(v)}


def answer_json(answer: Answer) -> dict[str, Any]:
    """The ``/ask`` response: the answer, its citations, every source passage, and metadata."""
    return {
        "answer": answer.text, "citations": [_passage(c) for c in answer.citations],
        "sources": [_passage(c) for c in answer.sources], "metadata": _metadata(answer),
    }


def completion(answer: Answer, model: str) -> dict[str, Any]:
    """A non-streaming chat completion; citations ride along under ``layered``."""
    gen = answer.generation
    prompt_tokens = int(getattr(gen, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(gen, "completion_tokens", 0) or 0)
    return {
        "id": new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "finish_reason": getattr(gen, "finish_reason", "stop") or "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "layered": layered_extra(answer.citations, answer.sources, answer.metadata),
    }


def chunk(completion_id: str, model: str, delta: dict[str, Any], finish: str | None = None,
          extra: Mapping[str, Any] | None = None) -> bytes:
    """One server-sent event carrying a ``chat.completion.chunk`` with ``delta`` (and ``extra`` top-level keys)."""
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}
    return sse(body)


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
