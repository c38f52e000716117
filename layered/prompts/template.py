"""Prompt templates as data: ``{name}`` placeholders, nothing else.

Rendering substitutes ``{name}`` with the variable's string value; ``{{`` and ``}}`` are
literal braces. There is no attribute access, indexing, format spec or expression
evaluation (unlike ``str.format`` or Jinja), so a template from a config file cannot
reach into Python objects. A placeholder with no value is an error that names it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from layered.errors import ConfigError, InputError
from layered.prompts.grounding import format_context
from layered.types import Hit, Message, Prompt

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class MissingVariableError(InputError):
    """A template placeholder has no value."""


def placeholders(template: str) -> list[str]:
    """Names of the ``{name}`` placeholders in ``template``, in order, without repeats."""
    names: list[str] = []
    for m in _PLACEHOLDER.finditer(template):
        name = m.group(1)
        if name is None:
            continue
        if not _NAME.match(name):
            raise ConfigError(f"invalid placeholder {{{name}}}: only {{name}} is allowed (write {{{{ for a literal brace)")
        if name not in names:
            names.append(name)
    return names


def render_text(template: str, variables: Mapping[str, Any]) -> str:
    """Substitute ``{name}`` placeholders (see module docstring)."""

    def sub(m: re.Match[str]) -> str:
        token, name = m.group(0), m.group(1)
        if name is None:
            return token[0]
        if not _NAME.match(name):
            raise ConfigError(f"invalid placeholder {{{name}}}: only {{name}} is allowed (write {{{{ for a literal brace)")
        if name not in variables or variables[name] is None:
            raise MissingVariableError(f"the prompt needs a value for {{{name}}}; pass {name}=... to ask()")
        return str(variables[name])

    return _PLACEHOLDER.sub(sub, template)


DEFAULT_SYSTEM = (
    "You are a helpful assistant. Answer the question using only the numbered reference passages. "
    "Cite the passages you use as [1], [2]. If the passages do not contain the answer, say that you do not know."
)
# Question first and repeated after the passages: with small models this keeps answers
# closer to the passages than passages-then-question (measured on MedQuAD questions).
DEFAULT_USER = (
    "Question: {question}\n\n{context}\n\n"
    'Answer the question "{question}" with facts from the passages above, citing them like [1].'
)
NO_CONTEXT_USER = "Question: {question}"


class ChatPromptTemplate(BaseModel):
    """A system message plus a user message with context and question slots.

    ``user`` must contain ``{question}``; it may contain ``{context}``, where the numbered,
    delimited reference passages go (when there are none, ``user_without_context`` is used).
    ``defaults`` gives values for other placeholders; values passed to :meth:`render` win.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "chat"
    system: str = DEFAULT_SYSTEM
    user: str = DEFAULT_USER
    user_without_context: str = NO_CONTEXT_USER
    defaults: dict[str, str] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err.get("loc", ())) or "template"
            raise ConfigError(f"invalid prompt config: {where}: {err['msg']}") from None

    def model_post_init(self, __context: Any) -> None:
        for field in ("system", "user", "user_without_context"):
            placeholders(getattr(self, field))  # validates syntax early
        if "question" not in placeholders(self.user):
            raise ConfigError("the user template must contain {question}")

    def render(self, *, question: str, context: Sequence[Hit] = (), **variables: Any) -> Prompt:
        """Render the chat messages. ``context`` hits are numbered 1..n in the given order."""
        values: dict[str, Any] = {**self.defaults, **variables, "question": question}
        messages = []
        if self.system:
            messages.append(Message("system", render_text(self.system, values)))
        if context:
            values["context"] = format_context(context)
            user = render_text(self.user, values)
        else:
            user = render_text(self.user_without_context, values)
        messages.append(Message("user", user))
        return Prompt(messages=tuple(messages), context=tuple(context))

    def config(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ChatPromptTemplate":
        return cls(**dict(config))
