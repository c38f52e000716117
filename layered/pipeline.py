"""The one object: prompt -> retriever -> generator, with ask/stream and save/load.

A pipeline has three named slots, each a plain object satisfying a role protocol:
``prompt`` (a :class:`~layered.protocols.PromptTemplate`), ``retriever`` (optional; any
object with ``retrieve(query, *, k, filters)``) and ``generator``; plus an optional
``router`` that picks the generator's adapter per question. Heavy models load on first use
or :meth:`Pipeline.warm_up`, never at construction. A part is checked when it is put into
its slot (a :class:`~layered.protocols.Slot`): its role's protocol, and the optional
capabilities of :mod:`layered.protocols`, recorded then and never probed per call.

The pipeline composes; the work is done beside it: :mod:`layered.prompts.packing`, :mod:`layered.answers`,
:mod:`layered.persistence`, :mod:`layered.generation.backends`, :mod:`layered.retrieval.defaults`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, cast

from layered import persistence
from layered.adapters import DEFAULT
from layered.answerability import Answerability, Decision, refusal_naming
from layered.answers import (
    DEFAULT_REFUSAL, GROUNDING, AnswerStream, Turn, answer_length, answer_turn, check_max_new_tokens, check_question, check_settings,
    one_turn, stream_answer,
)
from layered.errors import ConfigError
from layered.outbound import Trust
from layered.prompts import packing
from layered.prompts.conversation import DEFAULT_QUERY, checked_messages, split_turns, standalone_query
from layered.prompts.template import ChatPromptTemplate
from layered.protocols import (
    AdapterHost, Deletable, Embedded, Filters, Generator, Indexable, PromptTemplate, Reasoning, Retriever, Router,
    Slot, TokenBudgeted, WarmUp, provides,
)
from layered.retrieval.defaults import CHUNK_OVERLAP, CHUNK_SIZE
from layered.retrieval.filters import User, filtered_retrieve
from layered.types import Answer, Document, Hit, Message, Prompt

__all__ = ["AnswerStream", "DEFAULT_REFUSAL", "GROUNDING", "Pipeline"]


class Pipeline:
    """Prompt -> retrieval -> generation behind one object (see module docstring).

    Contract of :meth:`ask`: the prompt always fits the generator's window (lowest-ranked
    passages are dropped first, then :class:`ContextOverflowError`); ``Answer.citations``
    only ever refer to passages that were in the prompt.
    """

    def __init__(
        self, *, generator: Generator, retriever: Retriever | None = None, prompt: PromptTemplate | None = None, k: int = 4,
        metadata: dict[str, Any] | None = None, router: Router | None = None, min_score: float | None = None,
        refusal: str = DEFAULT_REFUSAL, grounding: str = "mark", history_query: str = DEFAULT_QUERY, abstain: Answerability | None = None,
    ) -> None:
        """``metadata``: free-form JSON-ready data saved with the pipeline. ``router`` chooses the adapter for requests naming
        none. With ``min_score`` (the retriever's scale), passages below it are dropped and a question keeping none gets
        ``refusal`` without generating (``metadata["refused"]``). ``grounding`` checks each answer sentence against the passages
        (:func:`~layered.prompts.grounding.sentence_support`): ``"mark"`` reports unsupported ones, ``"drop"`` removes them
        (quoting the best passage when none is left), ``"off"`` skips it. ``history_query``: how :meth:`chat` makes a follow-up
        standalone (:data:`~layered.prompts.conversation.QUERY_METHODS`).
        ``abstain`` (an :class:`~layered.answerability.Answerability`) decides before generating whether some
        passage answers; when none does, the answer is ``refusal`` naming what was found (``metadata["answerability"]``).
        """
        check_settings(k=k, grounding=grounding, history_query=history_query, abstain=abstain)
        self.abstain = abstain
        self.k, self.min_score, self.refusal, self.grounding, self.history_query = k, min_score, refusal, grounding, history_query
        self.metadata: dict[str, Any] = dict(metadata or {})
        # slots, each checked as it is put in (this order decides which error a bad call reports first)
        self.router, self.generator, self.retriever = router, generator, retriever
        self.prompt = prompt if prompt is not None else ChatPromptTemplate()

    # -- slots: each part is checked, and its capabilities recorded, when it is put in -------

    generator: Slot[Generator] = Slot(Generator, _budgeted=TokenBudgeted, _adapter_host=AdapterHost)
    retriever: Slot[Retriever | None] = Slot(Retriever, optional=True, _embedded=Embedded)
    prompt: Slot[PromptTemplate] = Slot(PromptTemplate, _reasons=Reasoning, derived={"_render_keywords": packing.render_keywords})
    router: Slot[Router | None] = Slot(Router, optional=True)
    _budgeted = _adapter_host = _embedded = _reasons = False  # what the slots record of their parts
    _render_keywords: frozenset[str] = frozenset()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_defaults(
        cls, corpus: str | Path | Sequence[Document] | None = None, *, k: int = 4, chunk_size: int = CHUNK_SIZE,
        chunk_overlap: int = CHUNK_OVERLAP, max_new_tokens: int = 256, prompt: PromptTemplate | None = None, progress: bool = False,
        metadata: dict[str, Any] | None = None, hybrid: bool = False, layout: str = "passages", embed: Any = None, **loader_options: Any,
    ) -> "Pipeline":
        """MiniLM embeddings in FAISS and the SmolLM2 generator (loaded on first use); ``corpus`` is indexed now
        (:func:`layered.retrieval.defaults.index_corpus`; ``embed``: where, e.g. a :class:`~layered.retrieval.distributed.RayEmbedding`)."""
        from layered.generation.transformers_generator import TransformersGenerator
        from layered.retrieval.defaults import index_corpus

        index = dict(chunk_size=chunk_size, chunk_overlap=chunk_overlap, hybrid=hybrid, layout=layout, progress=progress, embed=embed)
        retriever = None if corpus is None else index_corpus(corpus, **index, **loader_options)
        return cls(generator=TransformersGenerator(max_new_tokens=max_new_tokens), retriever=retriever, prompt=prompt, k=k, metadata=metadata)

    def warm_up(self) -> "Pipeline":
        """Load every model now (otherwise they load on first use)."""
        for part in (self.generator, self._embedder()):
            if provides(part, WarmUp):
                cast(WarmUp, part).warm_up()
        return self

    def add_documents(self, docs: Sequence[Document], *, progress: bool = False, embed: Any = None) -> Any:
        """Index new or changed documents (unchanged ones skipped; ``embed``: where); returns the retriever's report."""
        if not provides(self.retriever, Indexable):
            raise ConfigError("this pipeline's retriever cannot index documents (it has no add_documents)")
        options = {"embed": embed} if embed is not None else {}  # retrievers written before embed= keep working
        return self.retriever.add_documents(docs, progress=progress, **options)  # type: ignore[union-attr]

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Remove documents (all their chunks) from the index; returns how many were there."""
        if not provides(self.retriever, Deletable):
            raise ConfigError("this pipeline's retriever cannot delete documents (it has no delete_documents)")
        return int(self.retriever.delete_documents(doc_ids))  # type: ignore[union-attr]

    # -- asking ------------------------------------------------------------------------------

    def retrieve(self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None) -> list[Hit]:
        """The hits the pipeline would put in the prompt for ``question`` (before budgeting). With ``user``, only
        chunks whose access list names the user, one of their groups, or ``"*"`` can come back; the filter is
        applied inside the store query. ``k=0`` retrieves nothing (closed-book; with ``min_score``, a refusal)."""
        check_question(question)
        return filtered_retrieve(self.retriever, question, k=self.k if k is None else k, filters=filters, user=user,
                                 min_score=self.min_score)

    def build_prompt(self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
                     **variables: Any) -> Prompt:
        """The exact prompt ``ask`` sends: retrieved passages packed by rank into the budget."""
        return self.pack_prompt(question, self.retrieve(question, k=k, filters=filters, user=user), variables)

    def build_chat_prompt(self, messages: Sequence[Any], *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
                          **variables: Any) -> Prompt:
        """The exact prompt ``chat`` sends: passages retrieved for the standalone query, the
        earlier turns and the passages packed into the budget (see :mod:`layered.prompts.conversation`)."""
        turns = checked_messages(messages)
        history, question = split_turns(turns)
        return self.pack_chat(question, history, self.passages(self.standalone_query(turns), k=k, filters=filters, user=user)[0], variables)

    def passages(self, query: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
                 exclude: Sequence[str] = ()) -> tuple[list[Hit], Decision | None]:
        """The passages a request for ``query`` is answered from and the ``abstain`` decision (None without one;
        :meth:`~layered.answerability.Answerability.apply`). ``exclude``: documents left out, ``k`` others found
        in their place (how :meth:`fit` builds abstention examples)."""
        n = self.k if k is None else k
        hits = [h for h in self.retrieve(query, k=n + len(exclude) if n and exclude else n, filters=filters, user=user)
                if h.chunk.doc_id not in set(exclude)][:n]
        if self.abstain is None or self.retriever is None or not n:
            return hits, None
        return self.abstain.apply(query, hits, self._embedder())

    def standalone_query(self, messages: Sequence[Any]) -> str:
        """What retrieval (and the router) use for a chat: the final question made standalone
        with this pipeline's ``history_query`` method (the question itself when there is no history)."""
        return standalone_query(checked_messages(messages), method=self.history_query, generator=self.generator)

    def pack_prompt(self, question: str, hits: Sequence[Hit], variables: dict[str, Any]) -> Prompt:
        """Render ``question`` with ``hits`` (best first), dropping passages then few-shot examples to fit the budget."""
        return self.pack_chat(question, (), hits, variables)

    def pack_chat(self, question: str, history: Sequence[Message], hits: Sequence[Hit], variables: dict[str, Any]) -> Prompt:
        """Render ``question`` after ``history`` with ``hits`` (best first) in the budget (:func:`layered.prompts.packing.pack_chat`)."""
        return packing.pack_chat(self.prompt, question, history, hits, variables, keywords=self._render_keywords,
                                 budgeted=cast(TokenBudgeted, self.generator) if self._budgeted else None, embedder=self._embedder)

    def _embedder(self) -> Any:  # the retriever's vector space (few-shot selection), or None
        return self.retriever.embedder if self._embedded else None  # type: ignore[union-attr]

    def route(self, question: str, adapter: str | None = None) -> str | None:
        """The adapter a request gets: the one it names, else the router's pick, else None (the default)."""
        return adapter if adapter is not None or self.router is None else self.router.route(question)

    def ask(
        self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> Answer:
        """Answer ``question`` grounded in retrieved passages; ``variables`` fill the prompt. ``adapter``: the one to answer
        with (``"base"``: none; else the router's pick, else the default). ``max_new_tokens`` caps this answer only (the prompt's
        per-audience cap too: the smaller wins). ``ask(q)`` is ``chat([{"role": "user", "content": q}])``."""
        check_question(question)
        return self.chat([Message("user", question)], k=k, filters=filters, user=user, adapter=adapter,
                         max_new_tokens=max_new_tokens, **variables)

    def chat(
        self, messages: Sequence[Any], *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> Answer:
        """Answer the last user message of ``messages`` (:class:`~layered.types.Message` objects or ``{"role", "content"}`` dicts,
        the whole history; client system messages are ignored) as :meth:`ask` does. Retrieval and the router use the standalone
        query (:meth:`standalone_query`); earlier turns fill the budget, oldest first out."""
        turn = self._turn(lambda: messages, k=k, filters=filters, user=user, adapter=adapter, max_new_tokens=max_new_tokens, variables=variables)
        generation = None if turn.refused else self.generator.generate(turn.prompt, **turn.options)
        return answer_turn(turn, generation, grounding=self.grounding)

    def stream(
        self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> AnswerStream:
        """:meth:`ask`'s answer in pieces, showing only what ``ask`` returns (:func:`~layered.answers.stream_answer`)."""
        return self._stream(lambda: one_turn(question), k=k, filters=filters, user=user, adapter=adapter, max_new_tokens=max_new_tokens, variables=variables)

    def chat_stream(
        self, messages: Sequence[Any], *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> AnswerStream:
        """:meth:`chat`'s answer in pieces as it is generated (same prompt and adapter), like :meth:`stream`."""
        return self._stream(lambda: messages, k=k, filters=filters, user=user, adapter=adapter, max_new_tokens=max_new_tokens, variables=variables)

    def _stream(self, messages_of: Callable[[], Sequence[Any]], **request: Any) -> AnswerStream:  # checked when first iterated
        return stream_answer(lambda: self._turn(messages_of, **request), lambda prompt, **options: self.generator.stream(prompt, **options),
                             grounding=self.grounding)

    def _turn(self, messages_of: Callable[[], Sequence[Any]], *, k: int | None, filters: Filters | None, user: User | None,
              adapter: str | None, max_new_tokens: int | None, variables: dict[str, Any]) -> Turn:
        """One request checked, routed and packed: everything :meth:`chat` and :meth:`stream` generate from."""
        check_max_new_tokens(max_new_tokens)
        turns = checked_messages(messages_of())
        history, question = split_turns(turns)
        check_question(question)
        query = self.standalone_query(turns)
        name = self.route(query, adapter)
        if name is not None and not self._adapter_host:
            raise ConfigError(f"adapter {name!r} was asked for, but the {type(self.generator).__name__} generator serves no adapters")
        hits, decision = self.passages(query, k=k, filters=filters, user=user)
        declined = decision is not None and not decision.answerable
        prompt = self.pack_chat(question, history, [] if declined else hits, variables)
        return Turn(query=query, prompt=prompt, rewritten=len(turns) > 1 and query != question,
                    refused=declined or (self.min_score is not None and self.retriever is not None and not prompt.context),
                    decision=decision, refusal=refusal_naming(hits, lead=self.refusal) if declined else self.refusal,
                    reasoning=self._reasons and bool(self.prompt.reasoning),  # type: ignore[attr-defined]
                    adapter={} if name is None else {"adapter": name}, length=answer_length(prompt, max_new_tokens),
                    answered_by=name if name is not None or not self._adapter_host else self.generator.default_adapter)  # type: ignore[attr-defined]

    # -- tuning, evaluation, other backends: each documented where the work is done ---------

    def fit(self, train: Sequence[Any], *, val: Sequence[Any] | None = None, config: Any = None, name: str = DEFAULT, **options: Any) -> Any:
        """Fine-tune the generator on ``train`` examples formatted exactly as :meth:`ask` serves them; the
        pipeline then answers with adapter ``name`` (see :func:`layered.tuning.fit.fit_pipeline`)."""
        from layered.tuning.fit import fit_pipeline

        return fit_pipeline(self, train, val=val, config=config, name=name, **options)

    def fit_retriever(self, pairs: Sequence[Any], **options: Any) -> Any:
        """Fine-tune the retriever's embedder on ``pairs`` (:class:`~layered.retrieval.finetune.Pair`: a query and the id
        of an indexed document answering it), swapping in the re-embedded index only when the tuned embedder beats the base
        on validation (``options``: :func:`layered.retrieval.finetune.fit_retriever`); returns a ``RetrieverFitReport``."""
        from layered.retrieval.finetune import fit_retriever

        report, self.retriever = fit_retriever(self.retriever, pairs, **options)
        return report

    def evaluate(self, examples: Sequence[Any], *, adapter: str | None = None, progress: bool = False, **variables: Any) -> Any:
        """Answer every :class:`~layered.types.Example` as :meth:`ask` does and score the answers
        (a :class:`~layered.evaluation.comparison.StrategyResult`; see :func:`~layered.evaluation.comparison.evaluate_pipeline`)."""
        from layered.evaluation.comparison import evaluate_pipeline

        options = {} if adapter is None else {"adapter": adapter}
        return evaluate_pipeline(self, examples, label=adapter or "pipeline", variables=variables, progress=progress, **options)

    def add_adapter(self, name: str, source: str | Path, *, default: bool = False) -> None:
        """Serve the adapter of the saved, tuned pipeline in ``source`` as ``name`` on this pipeline's base
        (``default=True``: for requests naming none; see :func:`layered.persistence.add_saved_adapter`)."""
        persistence.add_saved_adapter(self.generator, name, source, default=default)

    def serve_with(self, backend: str, **options: Any) -> "Pipeline":
        """This pipeline (same prompt, retriever, k and router) answering with another generator backend,
        e.g. ``"llamacpp"`` (see :func:`layered.generation.backends.switch`); itself when it already has it."""
        from layered.generation.backends import switch

        generator = switch(self.generator, backend, **options)
        return self if generator is self.generator else self.replace(generator=generator)

    def replace(self, **changes: Any) -> "Pipeline":
        """A new pipeline sharing this one's parts and settings except ``changes`` (constructor names)."""
        current = {"generator": self.generator, "retriever": self.retriever, "prompt": self.prompt, "k": self.k,
                   "metadata": self.metadata, "router": self.router, "min_score": self.min_score, "refusal": self.refusal,
                   "grounding": self.grounding, "history_query": self.history_query, "abstain": self.abstain}
        unknown = sorted(set(changes) - set(current))
        if unknown:
            raise ConfigError(f"Pipeline.replace: unknown part(s) {', '.join(unknown)}; known: {', '.join(current)}")
        return Pipeline(**{**current, **changes})

    # -- persistence: layered.persistence ----------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this pipeline, as JSON-ready data."""
        return persistence.pipeline_config(self)

    def save(self, folder: str | Path) -> Path:
        """Save atomically: configs as JSON, the index in FAISS format, a sha256 manifest."""
        return persistence.save_pipeline(self, folder)

    @classmethod
    def load(cls, folder: str | Path, *, trust_remote_endpoint: Trust = False, api_key_env: str | None = None, **overrides: Any) -> "Pipeline":
        """Load a folder written by :meth:`save`, every file's sha256 checked; ``overrides`` replace slots
        (see :func:`layered.persistence.load_pipeline`: a folder contacts no host and reads no secret on its own)."""
        return persistence.load_pipeline(cls, folder, trust_remote_endpoint=trust_remote_endpoint, api_key_env=api_key_env, **overrides)
