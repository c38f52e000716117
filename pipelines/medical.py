"""The medical question-answering demo over the bundled MedQuAD sample.

``layered demo medical`` builds the index once into a cache folder and reuses it on later
runs (the cache is keyed by the sha256 of the bundled sample, so an edited sample is
re-indexed, never silently mixed with a stale index).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from layered.artifacts import sha256_file
from layered.errors import ArtifactError
from layered.pipeline import Pipeline
from layered.prompts.template import ChatPromptTemplate
from layered.tuning.data import Splits

log = logging.getLogger(__name__)

SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "medquad_sample.jsonl"
ATTRIBUTION = (
    "MedQuAD (Ben Abacha & Demner-Fushman, BMC Bioinformatics 2019), CC BY 4.0; "
    "a 1,000-pair sample is bundled with layered"
)

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
)

PROMPT_PATH = Path(__file__).resolve().parent / "data" / "medical_prompt.toml"
MEDICAL_PROMPT = ChatPromptTemplate.from_file(PROMPT_PATH)
AUDIENCES = tuple(MEDICAL_PROMPT.audiences)


def build(corpus: Path = SAMPLE_PATH, *, progress: bool = False, **options: Any) -> Pipeline:
    """A fresh medical pipeline indexed over ``corpus``; it refuses questions its sources do not cover."""
    pipe = Pipeline.from_defaults(
        corpus, prompt=MEDICAL_PROMPT, progress=progress,
        metadata={"corpus_sha256": sha256_file(corpus), "corpus": corpus.name}, **options,
    )
    pipe.min_score, pipe.refusal = MIN_SCORE, REFUSAL
    return pipe


def load_or_build(cache: Path, *, corpus: Path = SAMPLE_PATH, rebuild: bool = False, progress: bool = False) -> tuple[Pipeline, bool]:
    """The cached pipeline when it is intact and indexes this exact corpus, else a new one.

    Returns ``(pipeline, reused)``. A new pipeline is saved to ``cache`` atomically.
    """
    digest = sha256_file(corpus)
    if not rebuild and cache.exists():
        try:
            # The prompt is this library's current one; only the index is reused from the cache.
            pipe = Pipeline.load(cache, prompt=MEDICAL_PROMPT)
            if pipe.metadata.get("corpus_sha256") == digest:
                pipe.min_score, pipe.refusal = MIN_SCORE, REFUSAL
                return pipe, True
            log.info("the cached index was built from another corpus; rebuilding")
        except ArtifactError as e:
            log.warning("ignoring the cached index in %s: %s", cache, e)
    pipe = build(corpus, progress=progress)
    pipe.save(cache)
    return pipe, False


def comparison_splits(corpus: Path = SAMPLE_PATH, *, max_chars: int = 1200) -> Splits:
    """The sample's question/answer pairs split 80/10/10 by topic (``focus``), seeded.

    A topic never straddles two splits, so the test questions are about diseases the adapter
    and the few-shot pool never saw. Each example's relevant document (``doc_ids``) is its
    own MedQuAD page, which the index holds: the knowledge base has the answer, as in use.
    Pairs longer than ``max_chars`` are dropped so a RAG prompt plus answer fits for tuning.
    """
    from layered.tuning.data import clean, load_examples, split

    examples, _ = clean(load_examples(corpus, keep=["id", "focus"]), max_chars=max_chars)
    judged = [dataclasses.replace(e, metadata={"focus": e.metadata["focus"], "doc_ids": [str(e.metadata["id"])]})
              for e in examples]
    return split(judged, by="focus", validation=0.1, test=0.1, seed=0)
