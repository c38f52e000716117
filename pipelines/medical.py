"""The medical assistant: all three layers over the whole of MedQuAD.

* **Knowledge**: all 16,407 MedQuAD question-answer pages (CC BY 4.0), bundled as
  ``data/medquad.jsonl.gz``. Each page is one passage, its first :data:`PASSAGE_TOKENS` tokens
  (question + the opening of the answer), of which the embedder reads the first
  :data:`EMBED_TOKENS`: on MedQuAD questions this matched every-chunk indexing (hit@1 0.59 both,
  hit@4 0.855 vs 0.865 on 200 sample questions) at half the embedding work, which is what
  lets the first run index everything in a few minutes.
* **Instructions**: the audience-aware prompt (``data/medical_prompt.toml``): a patient gets
  two short sentences (:data:`answer_tokens` caps the length per audience), a clinician more.
* **Skill**: the shipped ``medical`` LoRA adapter (``data/adapters/medical/``), trained on
  the prompts this pipeline serves, on topics the evaluation never sees, to answer with the
  opening sentences of the passage that answers the question and cite it as ``[n]``.
* **Served** by llama.cpp (the GGUF's weights widened to F16, the adapter exported to a GGUF
  LoRA), with unsupported answer sentences dropped (``grounding="drop"``) and questions the
  sources do not cover refused (:data:`MIN_SCORE`).

``layered demo medical`` indexes once into a cache folder (keyed by the corpus' sha256 and the embedding precision) and
reuses it later; the adapter always comes from the package, checked against its manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Sequence

from layered.artifacts import sha256_file
from layered.pipeline import Pipeline
from layered.pipelines import cached_pipeline
from layered.prompts.template import ChatPromptTemplate
from layered.tuning.data import Splits
from layered.types import Example

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
KB_PATH = DATA / "medquad.jsonl.gz"
#: A 1,000-pair sample of the same data (whole topics), for tests and quick experiments.
SAMPLE_PATH = DATA / "medquad_sample.jsonl"
ATTRIBUTION = "MedQuAD (Ben Abacha & Demner-Fushman, BMC Bioinformatics 2019), CC BY 4.0; all 16,407 pairs bundled with layered"

DISCLAIMER = "This is general health information from MedQuAD, not medical advice: see a health professional."
#: Cosine similarity (all-MiniLM-L6-v2) below which a passage is not relevant enough to answer
#: from. Checked by hand on a few questions: off-topic ones (bread, football, capitals,
#: routers) top out at 0.16, medical ones start around 0.38.
MIN_SCORE = 0.3
REFUSAL = ("I could not find this in the medical sources I have (MedQuAD), so I will not guess. "
           "Please ask a doctor, nurse or pharmacist.")

DEMO_QUESTIONS = (
    "What are the treatments for Graves disease?",
    "What are the symptoms of shingles?",
    "How can I lower my high blood pressure?",
    "Can the birth control pill Ocella cause DVT?",  # no MedQuAD page answers it: declined
)
#: Topics of the demo questions: never in the adapter's training data, so the demo shows what
#: the adapter learned, not what it memorised.
DEMO_TOPICS = ("graves", "shingles", "high blood pressure")

PROMPT_PATH = DATA / "medical_prompt.toml"
#: The answerability decision (:mod:`layered.answerability`) fitted on the ``tune`` split of the
#: right-or-silent dev set (:mod:`layered.pipelines.medical_dev`) by ``benchmarks/right_or_silent.py``;
#: the file holds its weights, threshold, data hash and the labelled rows it was fitted on.
ANSWERABILITY_PATH = DATA / "medical_answerability.json"
MEDICAL_PROMPT = ChatPromptTemplate.from_file(PROMPT_PATH)
AUDIENCES = tuple(MEDICAL_PROMPT.audiences)
ADAPTER = "medical"
K = 3
PASSAGE_TOKENS = 200
EMBED_TOKENS = 128
#: The embedder's precision: fp32, not the library's int8 default nor bf16, so that retrieval, and
#: with it the shipped adapter's training contexts, is the same on every CPU (its recipe reproduces
#: the recorded losses only with them). bf16 is 1.8x faster where the CPU has it natively (README,
#: "Measured here"), but emulated on one without (AVX2 only) 7x *slower* than fp32 (6.1 vs 41.9 pages/s).
EMBED_PRECISION = "float32"


def answerability() -> Any:
    """The shipped answerability decision, or None before one was fitted."""
    from layered.answerability import Answerability

    return Answerability.from_file(ANSWERABILITY_PATH) if ANSWERABILITY_PATH.exists() else None


def build_base(corpus: Path = KB_PATH, *, progress: bool = False, precision: str = EMBED_PRECISION) -> Pipeline:
    """The medical pipeline indexed over ``corpus``, on the transformers backend, without the adapter."""
    from layered.generation.transformers_generator import TransformersGenerator
    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.dense import DenseRetriever
    from layered.retrieval.embedders import SentenceTransformerEmbedder
    from layered.retrieval.loaders import load_documents

    embedder = SentenceTransformerEmbedder(max_seq_length=EMBED_TOKENS, precision=precision)
    chunker = TokenChunker(size=PASSAGE_TOKENS, overlap=0, max_chunks=1, tokenizer=embedder.tokenizer())
    retriever = DenseRetriever(embedder=embedder, chunker=chunker)
    retriever.add_documents(load_documents(corpus), progress=progress)
    generator = TransformersGenerator(max_new_tokens=max(MEDICAL_PROMPT.answer_tokens.values()))
    return Pipeline(generator=generator, retriever=retriever, prompt=MEDICAL_PROMPT, k=K, min_score=MIN_SCORE,
                    refusal=REFUSAL, grounding="drop", abstain=answerability(), metadata={"corpus_sha256": sha256_file(corpus), "corpus": corpus.name,
                                                        "embed_precision": precision})


def with_adapter(pipe: Pipeline) -> Pipeline:
    """``pipe`` (transformers, no adapter) with the shipped ``medical`` adapter answering by default."""
    from layered.pipelines.shipped import ShippedAdapter

    ShippedAdapter.named(ADAPTER).install(pipe.generator, ADAPTER, default=True)
    return pipe


def load_or_build(
    cache: Path, *, corpus: Path = KB_PATH, rebuild: bool = False, progress: bool = False, adapter: bool = True,
) -> tuple[Pipeline, bool]:
    """The medical pipeline (transformers backend) from the cached index when it is intact and
    indexes this exact corpus, else a newly indexed one (saved to ``cache`` atomically).

    Returns ``(pipeline, reused)``. With ``adapter`` the shipped adapter is installed (from
    the package, never from the cache).
    """
    # The prompt is this library's current one; only the index is reused from the cache.
    expect = {"corpus_sha256": sha256_file(corpus), "embed_precision": EMBED_PRECISION}
    pipe, reused = cached_pipeline(cache, name="medical", expect=expect, rebuild=rebuild,
                                   build=lambda: build_base(corpus, progress=progress), prompt=MEDICAL_PROMPT)
    if reused:
        pipe = pipe.replace(min_score=MIN_SCORE, refusal=REFUSAL, grounding="drop", k=K, abstain=answerability())
    return (with_adapter(pipe) if adapter else pipe), reused


def splits(corpus: Path = KB_PATH, *, max_chars: int = 1200) -> Splits:
    """The corpus' question/answer pairs split 80/10/10 by topic (``focus``), seeded.

    A topic never straddles two splits, so test questions are about diseases the adapter and
    the few-shot pool never saw. Each example's relevant document (``doc_ids``) is its own
    MedQuAD page, which the index holds: the knowledge base has the answer, as in use. Pairs
    longer than ``max_chars`` are dropped so that a RAG prompt plus answer fits for tuning.
    """
    from layered.tuning.data import clean, load_examples, split

    examples, _ = clean(load_examples(corpus, keep=["id", "focus"]), max_chars=max_chars)
    judged = [dataclasses.replace(e, metadata={"focus": e.metadata["focus"], "doc_ids": [str(e.metadata["id"])]})
              for e in examples]
    return split(judged, by="focus", validation=0.1, test=0.1, seed=0)


comparison_splits = splits


def opening(answer: str, *, max_words: int = 45) -> str:
    """The first sentences of ``answer`` up to ``max_words`` words (always at least one sentence)."""
    from layered.prompts.grounding import split_sentences

    out: list[str] = []
    for sentence in split_sentences(answer):
        if out and len(" ".join(out + [sentence]).split()) > max_words:
            break
        out.append(sentence)
    return " ".join(out)


def adapter_examples(pipe: Pipeline, pool: Sequence[Example], *, n: int, seed: int = 0) -> list[Example]:
    """``n`` training targets for the adapter, drawn (seeded) from ``pool``: for a question whose
    own page is among the passages the pipeline retrieves for it (position ``i``), the target
    is that page's opening sentences followed by ``[i]`` (see module docstring). Questions on
    the demo's topics, and questions whose page is not retrieved, are skipped.
    """
    from layered.retrieval.loaders import load_documents

    pages = {d.id: d.text for d in load_documents(KB_PATH)}
    order = list(pool)
    random.Random(seed).shuffle(order)
    out: list[Example] = []
    for ex in order:
        if len(out) == n:
            break
        if any(t in str(ex.metadata.get("focus", "")).lower() for t in DEMO_TOPICS):
            continue
        page = ex.metadata["doc_ids"][0]
        context = pipe.build_prompt(ex.question).context
        where = next((i for i, h in enumerate(context, start=1) if h.chunk.doc_id == page), None)
        if where is None:
            continue
        answer = pages[page].split("\n\n", 1)[-1]  # the page text is question + blank line + answer
        out.append(Example(question=ex.question, answer=f"{opening(answer)} [{where}]", metadata=dict(ex.metadata)))
    return out


def recipe() -> dict[str, Any]:
    """The medical adapter's recipe: LoRA rank 8 (alpha 16) on every linear layer of each block."""
    from layered.adapters.config import ALL_LINEAR

    return {"method": "lora", "rank": 8, "alpha": 16.0, "target_modules": list(ALL_LINEAR), "learning_rate": 1e-3,
            "batch_size": 4, "max_steps": 40, "eval_every": 20, "checkpoint_every": 40, "seed": 0,
            "dropout_masks": "torch",  # the random stream the shipped adapter was trained with
            "precision": "float32"}  # bf16 autocast rounds differently per CPU, and crawls without native bf16
