"""Train the retriever too: fine-tune the embedder on the user's own (query, document) pairs.

The recipe is sentence-transformers' trainer with an in-batch-negatives loss
(MultipleNegativesRanking: every other passage in the batch is a negative) plus
``config.negatives`` hard negatives per pair mined from the current index (dense and BM25
fused, the query's known positives excluded), seeded, validated every epoch on held-out
queries (nDCG@10 of each query's positives among the passages the current index retrieves
for the validation queries) with early stopping and the best epoch kept. When the best
epoch is no better than the base model on validation, the base is kept: fine-tuning a small
embedder on a few hundred pairs can lose to it, and a tuned model that did not help is not
shipped.

Pairs come from relevance judgements (:func:`pairs_from_qrels`), question/answer data
(:func:`pairs_from_examples`: the question against its answer's document) or the corpus alone
(:func:`pairs_from_titles`: a title or heading as the query; :func:`pairs_from_sentences`: a
sentence as the query and its page without that sentence as the passage, the inverse cloze
task). Every pair carries a ``group``: splits and folds (:func:`grouped_split`,
:func:`grouped_folds`) never put one group on both sides, so a query, and any query sharing a
relevant document with it, is never both trained and tested.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from layered.errors import ArtifactError, ConfigError, EmptyDatasetError, InputError
from layered.types import Chunk, Document

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """A query and the id of a document that answers it; ``group`` keeps related queries together."""

    query: str
    doc_id: str
    group: str = ""
    #: The positive passage when it is not one of the document's indexed chunks (corpus-only
    #: pairs: the page with the query sentence taken out); empty: the document's chunk the
    #: current index ranks highest for the query.
    passage: str = ""


@dataclass(frozen=True)
class RetrieverTuneConfig:
    """How the embedder is fine-tuned. Defaults: of the recipes cross-validated on SciFact train
    folds, the one whose tuned embedders gained most on their own validation splits (4 mined
    negatives per pair, up to 4 epochs at 2e-5 with early stopping; the held-out folds were
    not used to choose, ``benchmarks/results/retriever_finetune.md``)."""

    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    #: Mined negatives are taken from the current index's top ``negative_depth`` hits, skipping
    #: the first ``negative_skip`` non-positive ones (likely unjudged positives).
    negative_depth: int = 30
    negative_skip: int = 3
    #: Mined hard negatives per pair (every pair gets this many; fewer found are repeated).
    negatives: int = 4
    validation: float = 0.1
    patience: int = 1
    seed: int = 0
    precision: str = "auto"
    #: ``"better"``: keep the tuned embedder only if it beats the base on validation;
    #: ``"tuned"``: keep it regardless (the report still holds both scores).
    keep: str = "better"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch_size >= 2 (in-batch negatives need a batch)")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.validation < 1:
            raise ConfigError(f"validation must be a fraction in [0, 1), got {self.validation}")
        if self.negative_depth < 1 or self.negative_skip < 0 or self.negative_skip >= self.negative_depth:
            raise ConfigError("negative_depth must be >= 1 and 0 <= negative_skip < negative_depth")
        if not 1 <= self.negatives <= self.negative_depth - self.negative_skip:
            raise ConfigError(f"negatives must be in [1, negative_depth - negative_skip], got {self.negatives}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"precision must be 'auto', 'float32' or 'bfloat16', got {self.precision!r}")
        if self.keep not in ("better", "tuned"):
            raise ConfigError(f"keep must be 'better' or 'tuned', got {self.keep!r}")


@dataclass
class RetrieverFitReport:
    """What :func:`fine_tune_embedder` did; ``kept`` is ``"tuned"`` or ``"base"``."""

    kept: str
    model_dir: str | None
    train_pairs: int
    validation_pairs: int
    triplets: int
    val_ndcg_base: float
    val_ndcg_tuned: float
    epochs_run: int
    seconds: float
    data_sha256: str
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pairs -------------------------------------------------------------------------------------


def pairs_from_qrels(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> list[Pair]:
    """One pair per judged-relevant (query, document); queries that share a relevant document
    share a group (connected components), so they never straddle a split."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for qid, rel in qrels.items():
        for did, grade in rel.items():
            if grade > 0:
                parent[find("q:" + qid)] = find("d:" + did)
    return [Pair(queries[qid], did, find("q:" + qid)) for qid, rel in qrels.items() if qid in queries
            for did, grade in rel.items() if grade > 0]


def pairs_from_examples(examples: Iterable[Any], *, doc_id: str = "doc_id", group: str | None = None) -> list[Pair]:
    """Pairs from question/answer examples whose ``metadata[doc_id]`` names the answer's document
    (``group``: a metadata key such as a topic; default: the document id)."""
    out = []
    for ex in examples:
        meta = getattr(ex, "metadata", {}) or {}
        if doc_id not in meta:
            raise InputError(f"an example has no metadata[{doc_id!r}]: pairs need the id of the answer's document")
        out.append(Pair(ex.question, str(meta[doc_id]), str(meta.get(group, meta[doc_id])) if group else str(meta[doc_id])))
    return out


def pairs_from_titles(documents: Iterable[Document], *, key: str = "title") -> list[Pair]:
    """Pairs from the corpus alone: a document's ``metadata[key]`` (a title or heading) as its query."""
    return [Pair(str(d.metadata[key]), d.id, d.id) for d in documents if str(d.metadata.get(key, "")).strip()]


def pairs_from_sentences(documents: Iterable[Document], *, per_document: int = 1, keep: float = 0.1, min_words: int = 6,
                         seed: int = 0) -> list[Pair]:
    """Pairs from the corpus alone, the inverse cloze task (Lee et al., 2019): up to
    ``per_document`` sentences of at least ``min_words`` words drawn from each page as queries,
    each against its page with that sentence taken out (kept in with probability ``keep``, so
    the model also learns that a passage containing the words is relevant). No query or
    judgement is read: only the text that will be indexed. Each pair is its own group."""
    from layered.retrieval.chunkers import sentence_spans

    rng = random.Random(seed)
    out = []
    for d in documents:
        spans = [(a, b) for a, b in sentence_spans(d.text) if len(d.text[a:b].split()) >= min_words]
        for a, b in rng.sample(spans, min(per_document, len(spans))):
            rest = d.text if rng.random() < keep else (d.text[:a] + d.text[b:]).strip()
            if rest:
                out.append(Pair(d.text[a:b].strip(), d.id, f"sentence:{d.id}:{a}", passage=rest))
    return out


def read_pairs(path: str | Path, *, split: str = "train") -> list[Pair]:
    """Pairs from a JSONL file of ``{"query": ..., "doc_id": ..., "group"?: ...}`` lines, or from
    a BEIR folder's relevance judgements of ``split`` (:func:`pairs_from_qrels`)."""
    path = Path(path)
    if path.is_dir():
        from layered.evaluation.retrieval import load_beir

        beir = load_beir(path, split=split)
        return pairs_from_qrels(beir.queries, beir.qrels)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Pair(str(row["query"]), str(row["doc_id"]), str(row.get("group") or row["doc_id"])))
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{n}: expected a JSON object with 'query' and 'doc_id' ({type(e).__name__}: {e})") from None
    if not out:
        raise EmptyDatasetError(f"{path} holds no pairs")
    return out


def grouped_split(pairs: Sequence[Pair], fraction: float, *, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(rest, held_out): about ``fraction`` of the groups held out, whole groups only."""
    groups = sorted({p.group for p in pairs})
    random.Random(seed).shuffle(groups)
    held = set(groups[:round(len(groups) * fraction)]) if fraction > 0 else set()
    return [p for p in pairs if p.group not in held], [p for p in pairs if p.group in held]


def grouped_folds(pairs: Sequence[Pair], n: int, *, seed: int = 0) -> list[tuple[list[Pair], list[Pair]]]:
    """``n`` (train, test) folds over whole groups: every group is tested exactly once."""
    if n < 2:
        raise ConfigError("cross-validation needs at least 2 folds")
    groups = sorted({p.group for p in pairs})
    random.Random(seed).shuffle(groups)
    fold_of = {g: i % n for i, g in enumerate(groups)}
    return [([p for p in pairs if fold_of[p.group] != i], [p for p in pairs if fold_of[p.group] == i]) for i in range(n)]


def data_hash(pairs: Sequence[Pair]) -> str:
    """sha256 of the pairs (order-independent), recorded with a tuned embedder."""
    lines = sorted(json.dumps([p.query, p.doc_id, p.group, *([p.passage] if p.passage else [])], ensure_ascii=False) for p in pairs)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# -- negatives ---------------------------------------------------------------------------------


def positive_passages(pairs: Sequence[Pair], chunks: Sequence[Chunk]) -> dict[str, list[str]]:
    """Each positive document's chunk texts (a pair's passage is one of its document's chunks)."""
    wanted = {p.doc_id for p in pairs}
    by_doc: dict[str, list[str]] = {}
    for c in chunks:
        if c.doc_id in wanted:
            by_doc.setdefault(c.doc_id, []).append(c.indexed_text)
    missing = wanted - set(by_doc)
    if missing:
        raise InputError(f"{len(missing)} pair documents are not in the index (e.g. {sorted(missing)[0]!r})")
    return by_doc


def mine_triplets(pairs: Sequence[Pair], retriever: Any, chunks: Sequence[Chunk], config: RetrieverTuneConfig) -> list[tuple[str, ...]]:
    """(query, positive passage, ``config.negatives`` hard negative passages) per pair.

    The positive passage is the pair's own ``passage`` if it has one, else the document's chunk
    the current retriever ranks highest for the query (its first chunk if none is retrieved);
    the negatives are retrieved chunks of documents that are not among the query's positives,
    ``negative_skip`` places down, drawn from the next few (repeated if fewer were found).
    """
    from tqdm.auto import tqdm

    passages = positive_passages([p for p in pairs if not p.passage], chunks)
    positives: dict[str, set[str]] = {}
    for p in pairs:
        positives.setdefault(p.query, set()).add(p.doc_id)
    rng = random.Random(config.seed)
    n = config.negatives
    out = []
    for p in tqdm(pairs, desc="mining negatives", unit="pair", leave=False, disable=len(pairs) < 200):
        hits = retriever.retrieve(p.query, k=config.negative_depth)
        own = [h.chunk.indexed_text for h in hits if h.chunk.doc_id == p.doc_id]
        others = list(dict.fromkeys(h.chunk.indexed_text for h in hits if h.chunk.doc_id not in positives[p.query]))
        positive = p.passage or (own[0] if own else passages[p.doc_id][0])
        pool = others[config.negative_skip:] or others
        if pool:
            drawn = rng.sample(pool[:max(5, 2 * n)], min(n, len(pool)))
            out.append((p.query, positive, *(drawn[i % len(drawn)] for i in range(n))))
    return out


def validation_pool(pairs: Sequence[Pair], retriever: Any, chunks: Sequence[Chunk], depth: int) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, corpus, relevant) for an IR evaluator: each validation query against the
    passages the current index retrieves for any validation query (top ``depth`` each) plus
    every chunk of its positive documents, so an epoch is scored on the ranking the served
    index must get right, not on a handful of mined triplets."""
    by_doc: dict[str, list[str]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c.indexed_text)
    ids: dict[str, str] = {}
    qids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for p in pairs:
        qid = qids.setdefault(p.query, f"q{len(qids)}")
        for text in by_doc.get(p.doc_id, []) + ([p.passage] if p.passage else []):
            relevant.setdefault(qid, set()).add(ids.setdefault(text, f"p{len(ids)}"))
    for q in qids:
        for h in retriever.retrieve(q, k=depth):
            ids.setdefault(h.chunk.indexed_text, f"p{len(ids)}")
    return {qid: q for q, qid in qids.items()}, {pid: text for text, pid in ids.items()}, relevant


# -- training ----------------------------------------------------------------------------------


def _st_imports() -> tuple[Any, ...]:
    try:
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.evaluation import InformationRetrievalEvaluator  # type: ignore[no-redef]
        from sentence_transformers.losses import MultipleNegativesRankingLoss  # type: ignore[no-redef]
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    try:
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.training_args import BatchSamplers  # type: ignore[no-redef]

    return InformationRetrievalEvaluator, MultipleNegativesRankingLoss, SentenceTransformerTrainer, SentenceTransformerTrainingArguments, BatchSamplers


def _val_evaluator(pool: tuple[dict[str, str], dict[str, str], dict[str, set[str]]], evaluator_cls: Any) -> Any:
    queries, corpus, relevant = pool
    return evaluator_cls(queries, corpus, relevant, name="val", ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[10],
                         precision_recall_at_k=[10], map_at_k=[10], write_csv=False, show_progress_bar=False)


def fine_tune_embedder(
    pairs: Sequence[Pair],
    *,
    retriever: Any,
    base_model: str | Path,
    out_dir: str | Path,
    config: RetrieverTuneConfig = RetrieverTuneConfig(),
    val_pairs: Sequence[Pair] | None = None,
    progress: bool = False,
    device: str | None = None,
) -> RetrieverFitReport:
    """Fine-tune the sentence-transformers model at ``base_model`` on ``pairs``; hard negatives
    come from ``retriever`` (the current index). ``val_pairs`` (default: a grouped
    ``config.validation`` split of ``pairs``) drive early stopping and the keep-or-not
    decision. The tuned model is written to ``out_dir`` (safetensors, no pickle) only when it
    beats the base on validation; ``report.kept`` says which. ``out_dir`` may hold an earlier
    tuned model, which is replaced, but no other files (refused before training). ``device``:
    where to train (default ``"cpu"``; ``"cuda"`` on a GPU).
    """
    import torch

    from layered import models

    if not pairs:
        raise EmptyDatasetError("no training pairs")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / "config_sentence_transformers.json").is_file():
        raise ArtifactError(f"{out} holds files that are not a sentence-transformers model; refusing to replace it: "
                            "choose a new or empty folder")
    started = time.perf_counter()
    if val_pairs is None:
        pairs, val_pairs = grouped_split(pairs, config.validation, seed=config.seed)
    if not val_pairs:
        raise ConfigError("fine-tuning the retriever needs validation pairs (validation > 0 or val_pairs)")
    leaked = {p.group for p in pairs} & {p.group for p in val_pairs}
    if leaked:
        raise InputError(f"{len(leaked)} groups are in both the training and validation pairs (e.g. {sorted(leaked)[0]!r})")
    chunks = list(retriever.store.chunks())
    train = mine_triplets(pairs, retriever, chunks, config)
    pool = validation_pool(val_pairs, retriever, chunks, config.negative_depth)
    if len(train) < config.batch_size:
        raise EmptyDatasetError(f"{len(train)} training triplets: fewer than one batch of {config.batch_size}")
    evaluator_cls, loss_cls, trainer_cls, args_cls, samplers = _st_imports()
    models.force_offline()
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(config.seed)
    device = device or "cpu"
    model = SentenceTransformer(str(base_model), device=device, local_files_only=True)
    evaluator = _val_evaluator(pool, evaluator_cls)
    metric = "val_cosine_ndcg@10"
    before = float(evaluator(model)[metric])
    bf16 = config.precision == "bfloat16" or (config.precision == "auto" and (device != "cpu" or _cpu_bf16()))
    work = Path(tempfile.mkdtemp(prefix="layered-embedder-"))
    try:
        args = args_cls(
            output_dir=str(work), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate, warmup_steps=config.warmup_ratio, seed=config.seed, data_seed=config.seed,
            bf16=bf16, use_cpu=device == "cpu", eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
            load_best_model_at_end=True, metric_for_best_model=f"eval_{metric}", greater_is_better=True,
            batch_sampler=samplers.NO_DUPLICATES, report_to="none", logging_steps=10, disable_tqdm=not progress,
            dataloader_num_workers=0,
        )
        from transformers import EarlyStoppingCallback

        columns = ["anchor", "positive", *(f"negative_{i + 1}" for i in range(config.negatives))]
        data = Dataset.from_dict({name: [t[i] for t in train] for i, name in enumerate(columns)})
        trainer = trainer_cls(model=model, args=args, train_dataset=data, loss=loss_cls(model), evaluator=evaluator,
                              callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience)])
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout is the caller's data
            trainer.train()
        epochs_run = int(round(trainer.state.epoch or 0))
        after = float(evaluator(model)[metric])
        kept = "tuned" if after > before or config.keep == "tuned" else "base"
        if kept == "tuned":
            if out.exists():
                shutil.rmtree(out)
            model.save(str(out), safe_serialization=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = RetrieverFitReport(
        kept=kept, model_dir=str(out) if kept == "tuned" else None, train_pairs=len(pairs), validation_pairs=len(val_pairs), triplets=len(train),
        val_ndcg_base=round(before, 4), val_ndcg_tuned=round(after, 4), epochs_run=epochs_run,
        seconds=round(time.perf_counter() - started, 1), data_sha256=data_hash([*pairs, *val_pairs]), config=asdict(config),
    )
    if out is not None:
        (out / "layered_fit.json").write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    log.info("retriever fine-tuning: validation nDCG@10 %.4f -> %.4f; kept the %s model", before, after, kept)
    return report


def _cpu_bf16() -> bool:
    from layered.hardware import cpu_supports_bf16

    return cpu_supports_bf16()


def fit_retriever(
    retriever: Any,
    pairs: Sequence[Pair],
    *,
    config: RetrieverTuneConfig = RetrieverTuneConfig(),
    val_pairs: Sequence[Pair] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[RetrieverFitReport, Any]:
    """(report, retriever): fine-tune ``retriever``'s sentence-transformers embedder on ``pairs``
    and return a re-embedded copy of the retriever when the tuned embedder won on validation
    (else ``retriever`` itself). ``retriever`` (dense or hybrid) is never modified, so an
    interruption leaves the caller with the old index.
    """
    from layered.retrieval.embedders import SentenceTransformerEmbedder

    embedder = getattr(retriever, "embedder", None)
    if not isinstance(embedder, SentenceTransformerEmbedder) or not callable(getattr(retriever, "reembedded", None)):
        raise ConfigError("fit_retriever tunes a dense or hybrid retriever with a sentence-transformers embedder")
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="layered-embedder-")) / "model"
    report = fine_tune_embedder(pairs, retriever=retriever, base_model=embedder.path, out_dir=out, config=config,
                                val_pairs=val_pairs, progress=progress)
    if report.kept != "tuned":
        return report, retriever
    tuned = SentenceTransformerEmbedder(str(out), batch_size=embedder.batch_size, precision=embedder.precision,
                                        max_seq_length=embedder.max_seq_length, owned=True)
    log.info("re-embedding %d chunks with the tuned embedder", len(retriever))
    return report, retriever.reembedded(tuned, progress=progress)
