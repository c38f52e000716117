"""Train what you serve: turn examples into token ids through the pipeline's own prompt.

Each example becomes exactly the chat that :meth:`layered.Pipeline.ask` would send for its
question (same template, same variables, same retrieved passages under the same token
budget), followed by the reference answer as the assistant turn. A multi-turn example
(``Example.history``) becomes exactly the prompt :meth:`layered.Pipeline.chat` would build
for that conversation: the same standalone query for retrieval, the same history packing. Labels are ``-100`` (no
loss) on every prompt token and the answer's own ids on the assistant turn, so the model is
trained only to produce answers. Optional distractors add passages retrieved for *other*
questions, so the model learns to pick the right passage (retrieval-augmented fine-tuning).
An *abstention* example (``abstain=True``, RAFT-style) is the same question served with its
answering documents (``metadata["doc_ids"]``) left out of retrieval, the next passages the index
finds in their place, and the pipeline's ``refusal`` as the target: the adapter learns to decline
when the passage that answers is absent, on exactly the prompt it would then be served.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from layered.errors import ConfigError, ContextOverflowError, InputError
from layered.generation.common import chat_messages
from layered.prompts.injection import control_tokens, defuse_control_tokens
from layered.protocols import TrainablePipeline
from layered.retrieval.filters import User, access_scope
from layered.types import Example, Hit, Message

IGNORE = -100


@dataclass(frozen=True)
class Features:
    """One tokenised training example."""

    input_ids: list[int]
    labels: list[int]
    #: The documents whose passages are in the prompt (the example's lineage).
    documents: tuple[str, ...] = ()

    @property
    def answer_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def _distractors(pipeline: TrainablePipeline, example: Example, pool: Sequence[Example], n: int, rng: random.Random,
                 scope: dict[str, Any]) -> list[Hit]:
    others = [e for e in pool if e.question != example.question]
    picked: list[Hit] = []
    for other in rng.sample(others, min(n, len(others))):
        hits = pipeline.retrieve(other.question, k=1, **scope)
        picked.extend(hits[:1])
    return picked


def format_example(
    pipeline: TrainablePipeline, example: Example, *, distractors: int = 0, pool: Sequence[Example] = (), seed: int = 0,
    abstain: bool = False, user: User | None = None,
) -> Features:
    """Token ids and labels for ``example`` as ``pipeline`` would serve it (see module docstring).

    Training runs as a principal: ``user`` sees what that user may see; None, the default, public
    documents only (access list holding ``"*"``), so a restricted passage never enters a prompt or,
    through it, the adapter's weights. Raises :class:`ContextOverflowError` when prompt plus answer
    do not fit the generator's context window (even after the prompt drops passages to its budget).
    """
    scope = access_scope(user)
    generator = pipeline.generator
    tokenizer = generator.tokenizer
    turns = (*example.history, Message("user", example.question))
    answer = example.answer
    if abstain:
        relevant = example.metadata.get("doc_ids")
        if not relevant:
            raise InputError(f"an abstention example needs the ids of the documents that answer it (metadata['doc_ids']): "
                             f"{example.question[:50]!r}")
        hits, _ = pipeline.passages(pipeline.standalone_query(turns), exclude=[str(d) for d in relevant], **scope)
        prompt, answer = pipeline.pack_chat(example.question, example.history, hits, dict(example.variables)), pipeline.refusal
    else:
        prompt = pipeline.build_chat_prompt(turns, **scope, **dict(example.variables))
    if distractors and pipeline.retriever is not None:
        extra = _distractors(pipeline, example, pool, distractors, random.Random(f"{seed}:{example.question}"), scope)
        known = {h.chunk.id for h in prompt.context}
        hits = list(prompt.context) + [h for h in extra if h.chunk.id not in known]
        random.Random(seed).shuffle(hits)  # the right passage is not always first
        prompt = pipeline.pack_chat(example.question, example.history, hits, dict(example.variables))
    chat = chat_messages(prompt, tokenizer)  # control tokens defused exactly as served
    prompt_ids = list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
    full = chat + [{"role": "assistant", "content": defuse_control_tokens(answer, control_tokens(tokenizer))}]
    full_ids = list(tokenizer.apply_chat_template(full, return_dict=True)["input_ids"])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ConfigError(
            "the generator's chat template renders the prompt differently with and without the answer, "
            "so the answer cannot be masked for training; use a generator whose chat template appends the answer"
        )
    limit = generator.context_window
    if len(full_ids) > limit:
        raise ContextOverflowError(
            f"example {example.question[:40]!r}... is {len(full_ids)} tokens with its answer; the window is {limit}: "
            "drop it in cleaning (max_chars) or lower k"
        )
    labels = [IGNORE] * len(prompt_ids) + full_ids[len(prompt_ids):]
    return Features(input_ids=full_ids, labels=labels, documents=tuple(dict.fromkeys(h.chunk.doc_id for h in prompt.context)))
