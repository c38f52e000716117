"""Conversations: checked chat turns, a standalone query for retrieval, history in the prompt.

The client sends the whole history (as with OpenAI's API; the server keeps no state). Three
things follow from it, all used alike by :meth:`layered.Pipeline.chat` and by ``fit``:

* :func:`checked_messages`: the turns, validated (roles ``system``/``user``/``assistant``,
  content a string or a list of ``{"type": "text", "text": ...}`` parts; the last turn that is
  not a system message must be the user's). Client system messages are kept in the checked
  list but never reach the prompt: the pipeline's own system prompt governs.
* :func:`standalone_query`: what retrieval searches for. A follow-up such as "How is it
  treated?" names nothing; the query adds what it refers to. Methods (:data:`QUERY_METHODS`):
  ``"last"`` (the final user message alone), ``"append"`` (the previous user turns, then the
  follow-up), ``"resolve"`` (the topic of the latest earlier question put in place of the
  follow-up's pronoun, or appended in brackets when it has none), ``"condense"`` (the
  generator rewrites the follow-up). The default, ``"resolve"``, was best on the 40
  follow-ups of ``benchmarks/data/followups.jsonl`` (hit@4 0.90 vs 0.75 appending the earlier
  user turns, 0.43 condensing with SmolLM2-135M, 0.03 the bare follow-up) and, unlike
  ``"append"``, kept hit@4 on questions that switch topic (1.0 vs 0.6); chosen on that same set.
* :func:`pack`: earlier turns become earlier chat messages (after the template's few-shot
  examples, before the final user message that carries the passages and the question), and
  parts are dropped until the prompt fits the generator's budget, in this order: earlier
  exchanges but the last, oldest first; passages down to the best one, lowest rank first; the
  last exchange; the last passage; few-shot examples. A chat without history is packed
  exactly as a one-question ``ask``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence, cast

from layered.errors import ContextOverflowError, InputError
from layered.types import Example, Hit, Message, Prompt, Role

ROLES = ("system", "user", "assistant")
QUERY_METHODS = ("last", "append", "resolve", "condense")
DEFAULT_QUERY = "resolve"
#: Earlier user turns a query keeps at most (the embedder reads only the start of a long query).
QUERY_TURNS = 2
#: Characters kept of each earlier user turn in a query.
QUERY_TURN_CHARS = 300


def text_of(content: Any) -> str:
    """A message's text: a string, or the ``{"type": "text", "text": ...}`` parts of a list, joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones, each must be well-formed
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InputError("each content part must be an object with a 'type'")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise InputError("a text content part needs 'text' (a string)")
                texts.append(part["text"])
        return "".join(texts)
    raise InputError("a message's 'content' must be a string or a list of content parts")


def checked_messages(messages: Any) -> tuple[Message, ...]:
    """``messages`` (:class:`Message` objects or ``{role, content}`` dicts) as checked turns.

    Raises :class:`InputError` with one line naming the problem: not a non-empty list, a
    turn without a known role or with bad content, no user message, or a last turn (not
    counting system messages) that is not the user's.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    role: str
    content: Any
    for n, message in enumerate(messages):
        if isinstance(message, Message):
            role, content = message.role, message.content
        elif isinstance(message, dict) and isinstance(message.get("role"), str):
            role, content = str(message["role"]), message.get("content")
        else:
            raise InputError("every message needs a 'role' (a string) and a 'content'")
        if role not in ROLES:
            raise InputError(f"message {n}: role {role[:30]!r} is not one of {', '.join(ROLES)}")
        out.append(Message(cast(Role, role), text_of(content)))
    spoken = [m for m in out if m.role != "system"]
    if not any(m.role == "user" for m in spoken):
        raise InputError("the request has no user message")
    if spoken[-1].role != "user":
        raise InputError("the last message must be the user's question (it is an assistant message)")
    return tuple(out)


def split_turns(messages: Sequence[Message]) -> tuple[tuple[Message, ...], str]:
    """``(history, question)`` of checked turns: the earlier user/assistant turns and the final user message's text."""
    spoken = [m for m in messages if m.role != "system"]
    return tuple(spoken[:-1]), spoken[-1].content


def exchanges(history: Sequence[Message]) -> list[tuple[Message, ...]]:
    """``history`` cut into exchanges, each a user turn and the replies after it (a leading reply is its own)."""
    groups: list[list[Message]] = []
    for m in history:
        if m.role == "user" or not groups:
            groups.append([m])
        else:
            groups[-1].append(m)
    return [tuple(g) for g in groups]


# -- the query retrieval searches for ---------------------------------------------------------

_LEAD = re.compile(
    r"^\s*(?:(?:what|who|how|which|why|where|when)\s+(?:is|are|was|were|do|does|causes?)(?:\s*\((?:is|are)\))?\s+"
    r"|(?:can|could)\s+you\s+(?:tell|explain)\s+(?:me\s+)?(?:about\s+|what\s+)?"
    r"|(?:please\s+)?(?:tell|teach)\s+me\s+(?:more\s+)?about\s+|explain\s+|i\s+(?:want|would\s+like|'d\s+like)\s+to\s+know\s+about\s+"
    r"|(?:do\s+you\s+know|have\s+you\s+heard)\s+(?:of|about)\s+)"
    r"(?:an?\s+|the\s+)?",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"\b(?:this condition|this disease|the condition|the disease|it|this|that|they|them)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.?!])\s+")


#: Words that ask about an aspect of a topic without naming one ("What are the early symptoms?").
_ASPECT = frozenset("""
a an the what which who whom how why when where is are was were be been do does did can could should would will there
any some many much more most of for to in on with about it its early first main common usual best other treatment
treatments treat treated treating therapy therapies cure cured symptom symptoms sign signs cause causes caused
diagnose diagnosed diagnosis test tests tested outlook prognosis inherited inheritance genetic genes gene risk risks
prevent prevented prevention people person affected affect affects complication complications type types stage
stages long term effects effect side medicine medicines medication medications drug drugs get happen happens
i me my you your we us our they them their this that these those have has had need needs
""".split())


def names_a_subject(question: str) -> bool:
    """Whether ``question`` has a word beyond question words and aspects (symptoms, treatment...)."""
    return any(w not in _ASPECT for w in re.findall(r"[a-z0-9']+", question.lower()))


def topic_of(text: str) -> str:
    """The subject of a question such as "What is Graves disease?" -> "Graves disease" (the last question-like sentence)."""
    sentences = [s for s in _SENTENCE.split(text.strip()) if s]
    for sentence in reversed(sentences):
        m = _LEAD.match(sentence)
        if m:
            topic = sentence[m.end():].strip().rstrip("?.! ").strip()
            if topic and not _PRONOUN.fullmatch(topic):
                return topic
    return text.strip().rstrip("?.! ")


CONDENSE_SYSTEM = ("Rewrite the user's last question as one standalone question that names what it is about. "
                   "Reply with the rewritten question only.")


def _condense(history: Sequence[Message], question: str, generator: Any) -> str:
    lines = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content[:QUERY_TURN_CHARS]}" for m in history[-4:]]
    prompt = Prompt(messages=(Message("system", CONDENSE_SYSTEM),
                              Message("user", "\n".join(lines) + f"\nUser: {question}\n\nStandalone question:")))
    options: dict[str, Any] = {"max_new_tokens": 40}
    if getattr(generator, "adapters", None):  # rewrite with the base model, not a task adapter
        options["adapter"] = "base"
    text = generator.generate(prompt, **options).text.strip()
    first = text.splitlines()[0].strip() if text else ""
    return first or question


def standalone_query(messages: Sequence[Message], *, method: str = DEFAULT_QUERY, generator: Any = None) -> str:
    """The retrieval query for checked turns (see module docstring); without history it is the question itself."""
    if method not in QUERY_METHODS:
        raise InputError(f"unknown query method {method!r}; choose one of {', '.join(QUERY_METHODS)}")
    history, question = split_turns(messages)
    earlier = [m.content.strip()[:QUERY_TURN_CHARS] for m in history if m.role == "user" and m.content.strip()]
    if not earlier or method == "last":
        return question
    if method == "append":
        return "\n".join([*earlier[-QUERY_TURNS:], question])
    if method == "resolve":
        topic = topic_of(earlier[-1])
        resolved, n = _PRONOUN.subn(topic, question, count=1)
        if n:
            return resolved
        # No pronoun: a question that names its own subject ("What is the capital of France?")
        # stands alone (and can still be refused); a bare aspect ("What are the symptoms?") gets the topic.
        return question if names_a_subject(question) else f"{question} ({topic})"
    if generator is None:
        raise InputError("the 'condense' query method needs the generator")
    return _condense(history, question, generator)


# -- history in the prompt --------------------------------------------------------------------

def with_history(prompt: Prompt, history: Sequence[Message]) -> Prompt:
    """``prompt`` with ``history`` as chat turns before its final (user) message."""
    if not history:
        return prompt
    messages = (*prompt.messages[:-1], *history, prompt.messages[-1])
    return Prompt(messages=messages, context=prompt.context, metadata={**prompt.metadata, "history": len(history)})


def pack(
    render: Callable[[list[Hit], int | None], Prompt], *, history: Sequence[Message], hits: Sequence[Hit],
    budget: int | None, count: Callable[[Prompt], int] | None,
) -> Prompt:
    """Render with as much history and as many passages as fit ``budget`` (tokens by ``count``), in the module docstring's order.

    ``render(hits, shots)`` renders the template (``shots=None``: its own number of examples).
    Raises :class:`ContextOverflowError` when the question alone does not fit.
    """
    groups, kept, shots = exchanges(history), list(hits), None

    def build() -> Prompt:
        return with_history(render(kept, shots), [m for g in groups for m in g])

    prompt = build()
    if budget is None or count is None:
        return prompt
    shots = int(prompt.metadata.get("shots", 0))
    while count(prompt) > budget:
        if len(groups) > 1:
            groups.pop(0)
        elif len(kept) > 1:
            kept.pop()
        elif groups:
            groups.pop(0)
        elif kept:
            kept.pop()
        elif shots:
            shots -= 1
        else:
            break
        prompt = build()
    n = count(prompt)
    if n > budget:
        raise ContextOverflowError(
            f"the question alone makes a {n}-token prompt but the generator allows {budget}; shorten the question"
        )
    return prompt


# -- training examples ------------------------------------------------------------------------

def example_from_messages(messages: Any, *, variables: Any = None, metadata: Any = None) -> Example:
    """A multi-turn training :class:`Example`: ``messages`` is a chat whose last turn is the
    assistant's reference answer; the turns before it are checked as :meth:`Pipeline.chat` checks them."""
    if not isinstance(messages, (list, tuple)) or len(messages) < 2:
        raise InputError("a chat example needs 'messages': the chat, ending with the assistant's answer")
    *chat, last = messages
    role: object
    if isinstance(last, Message):
        role, answer = last.role, last.content
    elif isinstance(last, dict):
        role, answer = last.get("role"), text_of(last.get("content"))
    else:
        raise InputError("every message needs a 'role' (a string) and a 'content'")
    if role != "assistant":
        raise InputError("a chat example's last message must be the assistant's answer")
    history, question = split_turns(checked_messages(list(chat)))
    return Example(question=question, answer=answer, history=history,
                   variables=dict(variables or {}), metadata=dict(metadata or {}))
