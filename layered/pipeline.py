"""The one object: prompt -> retriever -> generator, with ask/stream and save/load.

A pipeline has three named slots, each a plain object satisfying a role protocol:
``prompt`` (a :class:`~layered.protocols.PromptTemplate`), ``retriever`` (optional; any
object with ``retrieve(query, *, k, filters)``) and ``generator``; plus an optional
``router`` that picks the generator's adapter per question. Heavy models load on first use
or :meth:`Pipeline.warm_up`, never at construction.

A part is checked when it is put into its slot (constructor or attribute assignment): its
role's protocol, with one :class:`~layered.errors.ConfigError` line naming a missing method,
and the optional capabilities of :mod:`layered.protocols` (a token budget, named adapters,
indexing, warm-up, persistence), recorded then and never probed per call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, cast

import layered
from layered import registry
from layered.adapters import DEFAULT
from layered.artifacts import read_json, save_folder_atomically, atomic_write_json, verify_manifest
from layered.errors import ArtifactError, ConfigError, InputError
from layered.outbound import Trust, checked_slots
from layered.prompts.conversation import (
    DEFAULT_QUERY, QUERY_METHODS, checked_messages, pack, split_turns, standalone_query,
)
from layered.prompts.grounding import (
    attribute_by_overlap, parse_citations, quote_best_passage, sentence_support, to_citation,
)
from layered.prompts.injection import injection_suspects
from layered.prompts.reasoning import split_reasoning, stream_answer_only
from layered.prompts.template import ChatPromptTemplate
from layered.protocols import (
    AdapterHost, AdapterInstaller, Deletable, Embedded, Filters, Generator, Indexable, LoadsFiles, Persistable, PromptTemplate,
    Reasoning, Retriever, Router, SavesFiles, Timed, TokenBudgeted, WarmUp, accepts_keywords, provides, require,
)
from layered.retrieval.filters import User, matches, with_access
from layered.types import Answer, Citation, Document, Generation, Hit, Message, PieceStream, Prompt

log = logging.getLogger(__name__)

CONFIG_FILE = "pipeline.json"
DEFAULT_REFUSAL = "I could not find this in my sources, so I cannot answer it."
GROUNDING = ("mark", "drop", "off")
FORMAT_VERSION = 1


class Pipeline:
    """Prompt -> retrieval -> generation behind one object (see module docstring).

    Contract of :meth:`ask`: the prompt always fits the generator's window (lowest-ranked
    passages are dropped first, then :class:`ContextOverflowError`); ``Answer.citations``
    only ever refer to passages that were in the prompt.
    """

    def __init__(
        self,
        *,
        generator: Generator,
        retriever: Retriever | None = None,
        prompt: PromptTemplate | None = None,
        k: int = 4,
        metadata: dict[str, Any] | None = None,
        router: Router | None = None,
        min_score: float | None = None,
        refusal: str = DEFAULT_REFUSAL,
        grounding: str = "mark",
        history_query: str = DEFAULT_QUERY,
    ) -> None:
        """``metadata`` is free-form JSON-ready data saved with the pipeline (e.g. corpus hashes).

        ``router`` chooses the adapter for questions whose request names none. With
        ``min_score``, passages scoring below it are dropped, and a question that keeps no
        passage is answered with ``refusal`` instead of generating (``metadata["refused"]``):
        the scale is the retriever's (cosine for dense retrieval).

        ``grounding`` checks every answer sentence against the passages shown
        (:func:`~layered.prompts.grounding.sentence_support`): ``"mark"`` reports unsupported
        sentences in ``answer.metadata["grounding"]``, ``"drop"`` also removes them (and an
        answer with no supported sentence left quotes the best passage instead), ``"off"``
        skips the check.

        ``history_query`` is how :meth:`chat` turns a follow-up into a retrieval query (one of
        :data:`~layered.prompts.conversation.QUERY_METHODS`; ``"condense"`` asks the generator).
        """
        if history_query not in QUERY_METHODS:
            raise ConfigError(f"history_query must be one of {', '.join(QUERY_METHODS)}, not {history_query!r}")
        if grounding not in GROUNDING:
            raise ConfigError(f"grounding must be one of {', '.join(GROUNDING)}, not {grounding!r}")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.router = router
        self.min_score, self.refusal, self.grounding = min_score, refusal, grounding
        self.history_query = history_query
        self.generator = generator
        self.retriever = retriever
        self.prompt = prompt if prompt is not None else ChatPromptTemplate()
        self.k = k
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- slots: each part is checked, and its capabilities recorded, when it is put in -------

    @property
    def generator(self) -> Generator:
        return self._generator

    @generator.setter
    def generator(self, part: Generator) -> None:
        require("generator", part, Generator)
        self._generator = part
        self._budgeted = provides(part, TokenBudgeted)
        self._adapter_host = provides(part, AdapterHost)

    @property
    def retriever(self) -> Retriever | None:
        return self._retriever

    @retriever.setter
    def retriever(self, part: Retriever | None) -> None:
        if part is not None:
            require("retriever", part, Retriever)
        self._retriever = part
        self._embedded = provides(part, Embedded)

    @property
    def prompt(self) -> PromptTemplate:
        return self._prompt

    @prompt.setter
    def prompt(self, part: PromptTemplate) -> None:
        require("prompt", part, PromptTemplate)
        self._prompt = part
        #: What render() takes beyond the question and context: the few-shot selector's
        #: vector space and the number of shots the budget leaves.
        self._render_keywords = accepts_keywords(part.render, ("embedder", "shots"))
        self._reasons = provides(part, Reasoning)

    @property
    def router(self) -> Router | None:
        return self._router

    @router.setter
    def router(self, part: Router | None) -> None:
        if part is not None:
            require("router", part, Router)
        self._router = part

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_defaults(
        cls,
        corpus: str | Path | Sequence[Document] | None = None,
        *,
        k: int = 4,
        chunk_size: int = 200,
        chunk_overlap: int = 40,
        max_new_tokens: int = 256,
        prompt: PromptTemplate | None = None,
        progress: bool = False,
        metadata: dict[str, Any] | None = None,
        hybrid: bool = False,
        embed: Any = None,
        **loader_options: Any,
    ) -> "Pipeline":
        """A pipeline on the embedded defaults: MiniLM embeddings in FAISS, SmolLM2 generator.

        ``corpus`` (a file, a folder, or documents) is indexed now; the generator loads on
        first use. ``hybrid=True`` fuses BM25 with dense search. ``embed``: where the chunks are
        embedded (e.g. :class:`~layered.retrieval.distributed.RayEmbedding`; default: this
        process). ``loader_options`` go to :class:`~layered.retrieval.loaders.FileLoader`.
        """
        from layered.generation.transformers_generator import TransformersGenerator
        from layered.retrieval.chunkers import TokenChunker
        from layered.retrieval.dense import DenseRetriever
        from layered.retrieval.embedders import SentenceTransformerEmbedder
        from layered.retrieval.loaders import load_documents

        retriever: Any = None
        if corpus is not None:
            embedder = SentenceTransformerEmbedder()
            chunker = TokenChunker(size=chunk_size, overlap=chunk_overlap, tokenizer=embedder.tokenizer())
            retriever = DenseRetriever(embedder=embedder, chunker=chunker)
            if hybrid:
                from layered.retrieval.hybrid import HybridRetriever

                retriever = HybridRetriever(retriever)
            docs = load_documents(corpus, **loader_options) if isinstance(corpus, (str, Path)) else list(corpus)
            retriever.add_documents(docs, progress=progress, **({"embed": embed} if embed is not None else {}))
        generator = TransformersGenerator(max_new_tokens=max_new_tokens)
        return cls(generator=generator, retriever=retriever, prompt=prompt, k=k, metadata=metadata)

    def warm_up(self) -> "Pipeline":
        """Load every model now (otherwise they load on first use)."""
        for part in (self.generator, self.retriever.embedder if self._embedded else None):  # type: ignore[union-attr]
            if provides(part, WarmUp):
                cast(WarmUp, part).warm_up()
        return self

    def add_documents(self, docs: Sequence[Document], *, progress: bool = False, embed: Any = None) -> Any:
        """Index new or changed documents (unchanged ones are skipped); returns the retriever's report.

        ``embed``: where the new chunks are embedded (e.g. on Ray with
        :class:`~layered.retrieval.distributed.RayEmbedding`); the retriever must accept it.
        """
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

    def retrieve(
        self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
    ) -> list[Hit]:
        """The hits the pipeline would put in the prompt for ``question`` (before budgeting).

        With ``user``, only chunks whose access list names the user, one of their groups, or
        ``"*"`` can come back; the filter is applied inside the store query. ``k=0`` retrieves
        nothing (a closed-book answer; a pipeline with ``min_score`` then refuses).
        """
        _check_question(question)
        k = self.k if k is None else k
        if k < 0:
            raise InputError(f"k must be 0 or more passages, got {k}")
        if self.retriever is None or k == 0:
            return []
        filters = with_access(filters, user)
        hits = list(self.retriever.retrieve(question, k=k, filters=filters))
        # Defence in depth for user-written retrievers that ignore filters: never pass on a
        # chunk that fails them (the built-in stores already filter inside the query).
        allowed = [h for h in hits if matches(h.chunk.metadata, filters)]
        if len(allowed) < len(hits):
            log.warning("the retriever returned %d chunks outside the filters; dropped them", len(hits) - len(allowed))
        if self.min_score is not None:
            allowed = [h for h in allowed if h.score >= self.min_score]
        return allowed

    def build_prompt(
        self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None, **variables: Any,
    ) -> Prompt:
        """The exact prompt ``ask`` sends: retrieved passages packed by rank into the budget."""
        hits = self.retrieve(question, k=k, filters=filters, user=user)
        return self.pack_prompt(question, hits, variables)

    def build_chat_prompt(
        self, messages: Sequence[Any], *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        **variables: Any,
    ) -> Prompt:
        """The exact prompt ``chat`` sends: passages retrieved for the standalone query, the
        earlier turns and the passages packed into the budget (see :mod:`layered.prompts.conversation`)."""
        turns = checked_messages(messages)
        query = self.standalone_query(turns)
        return self._chat_prompt(turns, query, k=k, filters=filters, user=user, variables=variables)

    def standalone_query(self, messages: Sequence[Any]) -> str:
        """What retrieval (and the router) use for a chat: the final question made standalone
        with this pipeline's ``history_query`` method (the question itself when there is no history)."""
        return standalone_query(checked_messages(messages), method=self.history_query, generator=self.generator)

    def _chat_prompt(
        self, turns: Sequence[Message], query: str, *, k: int | None, filters: Filters | None, user: User | None,
        variables: dict[str, Any], hits: Sequence[Hit] | None = None,
    ) -> Prompt:
        history, question = split_turns(turns)
        if hits is None:
            hits = self.retrieve(query, k=k, filters=filters, user=user)
        return self.pack_chat(question, history, hits, variables)

    def _render(self, question: str, hits: list[Hit], variables: dict[str, Any], shots: int | None) -> Prompt:
        extra: dict[str, Any] = {}
        if "embedder" in self._render_keywords:  # few-shot selection in the retriever's vector space
            extra["embedder"] = self.retriever.embedder if self._embedded else None  # type: ignore[union-attr]
        if "shots" in self._render_keywords:
            extra["shots"] = shots
        return self.prompt.render(question=question, context=hits, **extra, **variables)

    def pack_prompt(self, question: str, hits: Sequence[Hit], variables: dict[str, Any]) -> Prompt:
        """Render ``question`` with ``hits`` (best first), dropping passages then few-shot examples to fit the budget."""
        return self.pack_chat(question, (), hits, variables)

    def pack_chat(self, question: str, history: Sequence[Message], hits: Sequence[Hit], variables: dict[str, Any]) -> Prompt:
        """Render ``question`` after the earlier turns ``history`` with ``hits`` (best first), dropping
        old turns, passages and few-shot examples to fit the budget, in the order
        :func:`layered.prompts.conversation.pack` documents. Without history: as :meth:`pack_prompt`."""
        budgeted = self.generator if self._budgeted else None
        return pack(lambda kept, shots: self._render(question, kept, variables, shots), history=history, hits=hits,
                    budget=None if budgeted is None else int(budgeted.prompt_budget),  # type: ignore[attr-defined]
                    count=None if budgeted is None else budgeted.count_tokens)  # type: ignore[attr-defined]

    def route(self, question: str, adapter: str | None = None) -> str | None:
        """The adapter a request gets: the one it names, else the router's pick, else None (the default)."""
        if adapter is not None:
            return adapter
        return self.router.route(question) if self.router is not None else None

    def _adapter_kwargs(self, question: str, adapter: str | None) -> dict[str, Any]:
        name = self.route(question, adapter)
        if name is None:
            return {}
        if not self._adapter_host:
            raise ConfigError(f"adapter {name!r} was asked for, but the {type(self.generator).__name__} generator serves no adapters")
        return {"adapter": name}

    def ask(
        self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> Answer:
        """Answer ``question`` grounded in retrieved passages; ``variables`` fill the prompt.

        ``adapter`` names the generator adapter to answer with (``"base"``: none); without
        it the router decides, else the generator's default adapter answers.
        ``max_new_tokens`` caps this answer's length (with the prompt's own per-audience cap,
        the smaller wins); the generator is not changed, so concurrent requests never see it.
        ``ask(q)`` is ``chat([{"role": "user", "content": q}])``.
        """
        _check_question(question)
        return self.chat([Message("user", question)], k=k, filters=filters, user=user, adapter=adapter,
                         max_new_tokens=max_new_tokens, **variables)

    def chat(
        self, messages: Sequence[Any], *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> Answer:
        """Answer the last user message of a conversation, as :meth:`ask` answers a question.

        ``messages``: :class:`~layered.types.Message` objects or ``{"role", "content"}`` dicts,
        the whole history, ending with the user's question (checked by
        :func:`~layered.prompts.conversation.checked_messages`). Retrieval and the router use
        the standalone query (:meth:`standalone_query`); the earlier turns go into the prompt
        as far as the budget allows, oldest dropped first. Client system messages are ignored.
        """
        _check_max_new_tokens(max_new_tokens)
        turns = checked_messages(messages)
        _check_question(split_turns(turns)[1])
        query = self.standalone_query(turns)
        chosen = self._adapter_kwargs(query, adapter)
        prompt = self._chat_prompt(turns, query, k=k, filters=filters, user=user, variables=variables)
        if self._refuses(prompt):
            return Answer(text=self.refusal, metadata={"refused": True, "adapter": None})
        generation = self.generator.generate(prompt, **chosen, **_length(prompt, max_new_tokens))
        answer = _answer(
            query, prompt, generation, reasoning=self._reasons and bool(self.prompt.reasoning),  # type: ignore[attr-defined]
            adapter=chosen.get("adapter", self._default_adapter()), grounding=self.grounding,
        )
        if len(turns) > 1 and query != split_turns(turns)[1]:
            answer = dataclasses.replace(answer, metadata={**answer.metadata, "query": query})
        return answer

    def stream(
        self, question: str, *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> "AnswerStream":
        """The answer text in pieces as it is generated (same prompt and adapter as :meth:`ask`).

        The returned iterator's ``metadata`` fills in once the prompt is built (before the
        first piece): ``injection_suspects`` as in :meth:`ask`, and ``refused``; its
        ``sources`` too. Once the last piece is out, ``citations`` and the metadata of
        :meth:`ask` (``grounding``, ``citation_mode``, ...) follow, computed on the whole
        streamed text; grounding only marks here (streamed text cannot be taken back).
        """
        def one_turn() -> tuple[Message, ...]:
            _check_question(question)  # when iterated, as before
            return (Message("user", question),)

        return self._stream(one_turn, k=k, filters=filters, user=user, adapter=adapter, max_new_tokens=max_new_tokens,
                            variables=variables)

    def chat_stream(
        self, messages: Sequence[Any], *, k: int | None = None, filters: Filters | None = None, user: User | None = None,
        adapter: str | None = None, max_new_tokens: int | None = None, **variables: Any,
    ) -> "AnswerStream":
        """:meth:`chat`'s answer in pieces as it is generated (same prompt and adapter), like :meth:`stream`."""
        return self._stream(lambda: messages, k=k, filters=filters, user=user, adapter=adapter,
                            max_new_tokens=max_new_tokens, variables=variables)

    def _stream(
        self, turns_of: Callable[[], Sequence[Any]], *, k: int | None, filters: Filters | None, user: User | None, adapter: str | None,
        max_new_tokens: int | None, variables: dict[str, Any],
    ) -> "AnswerStream":
        metadata: dict[str, Any] = {}
        result = AnswerStream(iter(()), metadata)

        def pieces() -> Iterator[str]:
            _check_max_new_tokens(max_new_tokens)
            turns = checked_messages(turns_of())
            _check_question(split_turns(turns)[1])
            query = self.standalone_query(turns)
            chosen = self._adapter_kwargs(query, adapter)
            prompt = self._chat_prompt(turns, query, k=k, filters=filters, user=user, variables=variables)
            result.sources = tuple(to_citation(n, h) for n, h in enumerate(prompt.context, start=1))
            suspects = injection_suspects(prompt.context)
            if suspects:
                metadata["injection_suspects"] = suspects
            if len(turns) > 1 and query != split_turns(turns)[1]:
                metadata["query"] = query
            if self._refuses(prompt):
                metadata["refused"] = True
                yield self.refusal
                return
            out = self.generator.stream(prompt, **chosen, **_length(prompt, max_new_tokens))
            text: list[str] = []
            for piece in stream_answer_only(out) if self._reasons and self.prompt.reasoning else out:  # type: ignore[attr-defined]
                text.append(piece)
                yield piece
            done = _answer(query, prompt, Generation(text="".join(text)), adapter=chosen.get("adapter", self._default_adapter()),
                           grounding="off" if self.grounding == "off" else "mark")
            result.citations = done.citations
            metadata.update(done.metadata)
            timing = cast(Timed, out).timing if provides(out, Timed) else None  # generators that measure their requests
            if timing:
                metadata["timing"] = dict(timing)

        result._pieces = pieces()
        return result

    def _default_adapter(self) -> str | None:
        """The adapter answering requests that name none (None: no adapters, or the base model)."""
        return self.generator.default_adapter if self._adapter_host else None  # type: ignore[attr-defined]

    def _refuses(self, prompt: Prompt) -> bool:
        """No passage cleared ``min_score``: answer with the refusal instead of guessing."""
        return self.min_score is not None and self.retriever is not None and not prompt.context

    # -- tuning ------------------------------------------------------------------------------

    def fit(
        self, train: Sequence[Any], *, val: Sequence[Any] | None = None, config: Any = None, name: str = DEFAULT, **options: Any,
    ) -> Any:
        """Fine-tune the generator on ``train`` examples formatted exactly as :meth:`ask` serves them.

        ``config`` is a :class:`layered.tuning.config.TuneConfig` (LoRA by default);
        ``options`` go to :func:`layered.tuning.fit.fit_pipeline` (``out_dir``, ``resume``,
        ``distractors``, ``progress``, ``check_forgetting``). The pipeline answers with the
        adapter (named ``name``, ``"default"`` unless given) afterwards and :meth:`save` stores
        it. Returns the training report (``val_losses[0]`` is before training; ``forgetting``
        holds the general-text perplexity of the base and the tuned model).
        """
        from layered.tuning.fit import fit_pipeline

        return fit_pipeline(self, train, val=val, config=config, name=name, **options)

    def fit_retriever(self, pairs: Sequence[Any], **options: Any) -> Any:
        """Fine-tune the retriever's embedder on ``pairs`` (:class:`layered.retrieval.finetune.Pair`:
        a query and the id of an indexed document that answers it) and re-embed the index.

        ``options`` go to :func:`layered.retrieval.finetune.fit_retriever` (``config``,
        ``val_pairs``, ``out_dir``, ``progress``). The retriever is swapped only when the tuned
        embedder beats the base on the validation pairs and the whole index is re-embedded;
        :meth:`save` then stores the embedder with the index. Returns the
        :class:`~layered.retrieval.finetune.RetrieverFitReport`.
        """
        from layered.retrieval.finetune import fit_retriever

        report, self.retriever = fit_retriever(self.retriever, pairs, **options)
        return report

    def evaluate(self, examples: Sequence[Any], *, adapter: str | None = None, progress: bool = False, **variables: Any) -> Any:
        """Answer every :class:`~layered.types.Example` as :meth:`ask` does and score the answers.

        Returns a :class:`layered.evaluation.comparison.StrategyResult`: token F1 and ROUGE-L
        against the reference answers, retrieval hit rate / MRR and citation precision when
        examples list their relevant ``metadata["doc_ids"]``, refusals, latency and tokens.
        Run it before and after :meth:`fit` (with ``adapter="base"`` and without) to see what
        tuning changed; ``layered compare`` puts it beside prompt-only and few-shot answers.
        """
        from layered.evaluation.comparison import evaluate_pipeline

        options = {} if adapter is None else {"adapter": adapter}
        return evaluate_pipeline(self, examples, label=adapter or "pipeline", variables=variables, progress=progress, **options)

    def add_adapter(self, name: str, source: str | Path, *, default: bool = False) -> None:
        """Serve the adapter of the saved, tuned pipeline in ``source`` as ``name`` on this pipeline's base.

        The source's manifest is checked and its base model must be this generator's.
        ``default=True`` makes it answer requests that name no adapter (and match no route).
        """
        from layered.generation.transformers_generator import adapter_file

        source = Path(source)
        verify_manifest(source)
        theirs = read_json(source / CONFIG_FILE).get("generator") or {}
        if not provides(self.generator, AdapterInstaller):
            raise ConfigError(f"the {type(self.generator).__name__} generator serves no adapters")
        ours = self.generator.model_name  # type: ignore[attr-defined]
        if theirs.get("model") != ours:
            raise ConfigError(f"{source} was tuned on {theirs.get('model')!r}, but this pipeline serves {ours!r}")
        saved = theirs.get("adapters") or {}
        if len(saved) != 1:
            raise ConfigError(f"{source} holds {len(saved)} adapters; add_adapter takes a pipeline tuned with exactly one")
        (theirs_name, config), = saved.items()
        self.generator.add_adapter(name, config, adapter_file(source, theirs_name), default=default)  # type: ignore[attr-defined]

    def serve_with(self, backend: str, **options: Any) -> "Pipeline":
        """This pipeline (same prompt, retriever, k and router) answering with another generator backend.

        ``"llamacpp"`` from a transformers generator: llama.cpp on the same GGUF (its weights
        widened to F16 unless ``precision="native"``) with every LoRA adapter exported to a
        GGUF LoRA and switched per request like the transformers ones (4.1-4.3x the tokens/s
        here, the same greedy answers; ``options`` go to ``LlamaCppGenerator.from_generator``).
        Asking for the backend the pipeline already has returns the pipeline itself.
        """
        from layered.generation.backends import switch

        generator = switch(self.generator, backend, **options)
        return self if generator is self.generator else self.replace(generator=generator)

    def replace(self, **changes: Any) -> "Pipeline":
        """A new pipeline sharing this one's parts and settings except ``changes`` (constructor names)."""
        current = {"generator": self.generator, "retriever": self.retriever, "prompt": self.prompt, "k": self.k,
                   "metadata": self.metadata, "router": self.router, "min_score": self.min_score, "refusal": self.refusal,
                   "grounding": self.grounding, "history_query": self.history_query}
        unknown = sorted(set(changes) - set(current))
        if unknown:
            raise ConfigError(f"Pipeline.replace: unknown part(s) {', '.join(unknown)}; known: {', '.join(current)}")
        return Pipeline(**{**current, **changes})

    # -- persistence -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this pipeline, as JSON-ready data."""
        parts = {"generator": self.generator, "prompt": self.prompt, "retriever": self.retriever, "router": self.router}
        cfg: dict[str, Any] = {
            "format": FORMAT_VERSION, "layered_version": layered.__version__, "k": self.k, "metadata": self.metadata,
            "min_score": self.min_score, "refusal": self.refusal, "grounding": self.grounding,
            "history_query": self.history_query,
        }
        for name, part in parts.items():
            if part is None:
                cfg[name] = None
                continue
            if not provides(part, Persistable):
                raise ConfigError(
                    f"the {name} ({type(part).__name__}) has no config() method, so the pipeline cannot be saved; "
                    "give it config()/from_config() and register it with layered.registry.register"
                )
            cfg[name] = cast(Persistable, part).config()
        return cfg

    def save(self, folder: str | Path) -> Path:
        """Save atomically: configs as JSON, the index in FAISS format, a sha256 manifest."""
        cfg = self.config()

        def write(tmp: Path) -> None:
            atomic_write_json(tmp / CONFIG_FILE, cfg)
            for part in (self.retriever, self.generator):
                if provides(part, SavesFiles):
                    cast(SavesFiles, part).save(tmp)

        path = save_folder_atomically(folder, write, manifest_extra={"layered_version": layered.__version__})
        log.info("saved pipeline to %s", path)
        return path

    @classmethod
    def load(
        cls, folder: str | Path, *, trust_remote_endpoint: Trust = False, api_key_env: str | None = None, **overrides: Any,
    ) -> "Pipeline":
        """Load a folder written by :meth:`save`, after checking every file's sha256.

        ``overrides`` replace slots (e.g. ``generator=...``) instead of building them. A
        folder contacts no host and reads no secret on its own (:mod:`layered.outbound`):
        endpoints it names must be allowed by ``trust_remote_endpoint`` (URLs, or True),
        and the API key variable is ``api_key_env``, never the folder's.
        """
        folder = Path(folder)
        verify_manifest(folder)
        cfg = _checked_config(folder, read_json(folder / CONFIG_FILE))
        if cfg.get("layered_version") != layered.__version__:
            log.warning("%s was saved by layered %s; this is %s", folder, cfg.get("layered_version"), layered.__version__)
        saved = {name: cfg[name] for name in SLOTS if name not in overrides and cfg.get(name) is not None}
        saved = checked_slots(folder, saved, trust=trust_remote_endpoint, api_key_env=api_key_env)
        parts: dict[str, Any] = {name: overrides.get(name) for name in SLOTS}
        for name, part_cfg in saved.items():
            cls_ = registry.lookup(name, part_cfg["kind"])
            try:
                # Parts with files of their own (an index, adapter weights) load from the folder.
                parts[name] = cls_.load(folder, part_cfg) if provides(cls_, LoadsFiles) else cls_.from_config(part_cfg)
            except (KeyError, TypeError, AttributeError, IndexError) as e:  # a hand-edited config: one line, not a traceback
                raise ArtifactError(f"{folder / CONFIG_FILE}: the {name} config is malformed ({type(e).__name__}: {e})") from None
        return cls(
            generator=parts["generator"], retriever=parts["retriever"], prompt=parts["prompt"],
            k=cfg["k"], metadata=cfg.get("metadata") or {}, router=parts["router"],
            min_score=cfg.get("min_score"), refusal=cfg.get("refusal", DEFAULT_REFUSAL), grounding=cfg.get("grounding", "mark"),
            history_query=cfg.get("history_query", DEFAULT_QUERY),
        )


SLOTS = ("generator", "prompt", "retriever", "router")


def _checked_config(folder: Path, cfg: Any) -> dict[str, Any]:
    """The saved config's top level, type-checked, or one :class:`ArtifactError` line naming the field."""
    where = folder / CONFIG_FILE
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{where} must hold a JSON object, not {type(cfg).__name__}")
    if cfg.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{folder} was saved in format {cfg.get('format')}; this layered reads format {FORMAT_VERSION}")
    k = cfg.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ArtifactError(f"{where}: 'k' must be a positive integer, got {json_repr(k)}")
    if cfg.get("min_score") is not None and (not isinstance(cfg["min_score"], (int, float)) or isinstance(cfg["min_score"], bool)):
        raise ArtifactError(f"{where}: 'min_score' must be a number or null, got {json_repr(cfg['min_score'])}")
    if not isinstance(cfg.get("refusal", DEFAULT_REFUSAL), str):
        raise ArtifactError(f"{where}: 'refusal' must be a string")
    if cfg.get("history_query", DEFAULT_QUERY) not in QUERY_METHODS:
        raise ArtifactError(f"{where}: 'history_query' must be one of {', '.join(QUERY_METHODS)}, got {json_repr(cfg['history_query'])}")
    if not isinstance(cfg.get("metadata") or {}, dict):
        raise ArtifactError(f"{where}: 'metadata' must be an object")
    for name in SLOTS:
        part = cfg.get(name)
        if part is not None and not (isinstance(part, dict) and isinstance(part.get("kind"), str)):
            raise ArtifactError(f"{where}: '{name}' must be an object with a 'kind' (a string), got {json_repr(part)}")
    return cfg


def json_repr(value: Any) -> str:
    """A short JSON rendering of a config value for an error line."""
    return json.dumps(value, default=lambda o: type(o).__name__)[:60]


class AnswerStream(PieceStream):
    """A streamed answer: iterate for its text pieces; ``metadata`` (filled before the first
    piece) carries what :class:`~layered.types.Answer` metadata would; ``close()`` stops the
    generator's decoding loop."""

    def __init__(self, pieces: Iterator[str], metadata: dict[str, Any]) -> None:
        super().__init__(pieces)
        self.metadata = metadata
        #: Every passage in the prompt (known before the first piece) and, once the stream
        #: has ended, the ones the answer cites, as in :class:`~layered.types.Answer`.
        self.sources: tuple[Citation, ...] = ()
        self.citations: tuple[Citation, ...] = ()


def _check_question(question: Any) -> None:
    if not isinstance(question, str):
        raise InputError(f"the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise InputError("the question is empty; ask something")


def _check_max_new_tokens(n: Any) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise InputError(f"max_new_tokens must be a positive integer, got {n!r}")


def _length(prompt: Prompt, requested: int | None = None) -> dict[str, Any]:
    """The answer budget as generator options: the smaller of the prompt's own (e.g. per
    audience) and the request's; nothing when neither sets one."""
    caps = [int(n) for n in (prompt.metadata.get("max_new_tokens"), requested) if n is not None]
    return {"max_new_tokens": min(caps)} if caps else {}


def _ground(question: str, text: str, prompt: Prompt, mode: str) -> tuple[str, dict[str, Any]]:
    """Check ``text`` sentence by sentence against the prompt's passages (see ``Pipeline(grounding=...)``)."""
    checks = sentence_support(text, prompt.context)
    unsupported = [c.text for c in checks if not c.supported]
    checked = [c for c in checks if c.checked]
    report: dict[str, Any] = {"mode": mode, "sentences": len(checked), "supported": sum(c.supported for c in checked),
                              "unsupported": unsupported, "fallback": False}
    if mode == "drop" and unsupported:
        if any(c.supported for c in checked):
            text = " ".join(c.text for c in checks if c.supported)
        else:  # nothing the model wrote is in the passages: quote the best one instead of inventing
            quote = quote_best_passage(question, prompt.context)
            if quote is not None:
                text, report["fallback"] = quote[0], True
    return text, report


def _answer(
    question: str, prompt: Prompt, generation: Any, *, reasoning: bool = False, adapter: str | None = None, grounding: str = "off",
) -> Answer:
    text = generation.text
    metadata: dict[str, Any] = {"citation_mode": "model", "adapter": adapter}
    if reasoning:
        metadata["reasoning"], text = split_reasoning(text)
    if grounding != "off" and prompt.context:
        text, metadata["grounding"] = _ground(question, text, prompt, grounding)
    citations, invalid = parse_citations(text, prompt.context)
    if not citations and prompt.context:
        citations = attribute_by_overlap(text, prompt.context)
        metadata["citation_mode"] = "overlap"
    sources = tuple(to_citation(n, h) for n, h in enumerate(prompt.context, start=1))
    if invalid:
        metadata["invalid_citations"] = invalid
    timing = generation.timing
    if timing:
        metadata["timing"] = dict(timing)
    suspects = injection_suspects(prompt.context)
    if suspects:
        metadata["injection_suspects"] = suspects
    return Answer(text=text, citations=tuple(citations), sources=sources, generation=generation, metadata=metadata)
