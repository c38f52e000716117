"""The medical assistant's right-or-silent dev set: consumer-style questions, answerable and not.

MedQuAD's own questions are templated ("What is (are) X ?") and their references are page
openings, so they reward copying a passage. This dev set asks the way people write to a health
information service, on topics the shipped adapter never saw, and includes questions the
sources cannot answer:

* **Topics.** Only the validation and test topics of :func:`layered.pipelines.medical.splits`
  (split by MedQuAD ``focus``; the adapter trains on the train topics). Validation topics form
  the ``tune`` split (thresholds and calibration are chosen there), test topics the ``test``
  split (reported, never tuned on).
* **Answerable** questions are rewritten from a MedQuAD question by rules (:data:`REWRITES`):
  lay phrasing per question type ("how do doctors test for X", "does X run in families"), a
  context prefix ("my mom was just diagnosed with X."), lower case, one misspelt word of the
  topic name (one seeded edit in a word of 6+ letters), or two questions in one ("what causes X
  and how is it treated"). The relevant pages are every page of the same topic and question type.
* **Unanswerable** questions are asked about a topic whose pages are all *removed* from the
  index (:func:`removed_pages`: every page with that focus, or whose question names it), so the
  sources cannot answer; plus :data:`OFF_TOPIC` questions no medical page answers.

Everything is seeded and built from the bundled corpus; ``data/dev/medical_dev.jsonl`` is the
built set (a test checks that :func:`build` reproduces it).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from typing import Any, Iterable

from layered.types import Example

DEV_PATH = Path(__file__).resolve().parent / "data" / "dev" / "medical_dev.jsonl"

#: Lay rewrites per MedQuAD question type ("{x}": the topic in lower case).
REWRITES: dict[str, tuple[str, ...]] = {
    "information": ("what is {x}", "can someone explain what {x} is?", "i was just told i have {x}. what is that exactly?"),
    "symptoms": ("what are the signs of {x}?", "how do i know if i have {x}", "what does {x} feel like, what symptoms should i watch for?"),
    "treatment": ("how is {x} treated?", "whats the best treatment for {x}", "can {x} be cured? what are the options"),
    "inheritance": ("does {x} run in families?", "can i pass {x} on to my kids?", "is {x} genetic"),
    "frequency": ("how common is {x}?", "how many people get {x}"),
    "genetic changes": ("what gene causes {x}?", "which mutations are behind {x}"),
    "causes": ("what causes {x}?", "why do people get {x}"),
    "exams and tests": ("how do doctors test for {x}?", "how is {x} diagnosed"),
    "research": ("are there any clinical trials for {x}?", "is there new research on {x}"),
    "outlook": ("what is the prognosis for {x}?", "can you live a normal life with {x}"),
    "susceptibility": ("who gets {x}?", "am i at risk of {x}"),
    "prevention": ("how can i avoid getting {x}?", "can {x} be prevented"),
    "considerations": ("what should i do about {x}?",),
    "stages": ("what are the stages of {x}?",),
    "complications": ("what problems can {x} lead to?",),
}
PREFIXES = ("", "", "", "hi, ", "my mom was just diagnosed with {x}. ", "question about my son: ", "please help, ")
#: Two questions in one: (first type, second type, template).
PAIRS = (("causes", "treatment", "what causes {x} and how is it treated?"),
         ("symptoms", "treatment", "what are the symptoms of {x} and what can be done about it"),
         ("information", "inheritance", "what is {x} and is it hereditary?"))
#: Questions no MedQuAD page answers (general knowledge, other domains, advice the sources do not give).
OFF_TOPIC = (
    "What is the capital of Australia?", "how do i bake sourdough bread", "who won the world cup in 2018",
    "best laptop for programming under 1000 dollars", "how do I reset my wifi router", "what's the weather like in paris in may",
    "how to fix a leaking kitchen faucet", "recommend a good divorce lawyer near me", "how much should i tip at a restaurant",
    "what is the square root of 144", "how do I change a flat tire", "translate good morning into japanese",
    "can you write me a poem about the sea", "what time does the pharmacy on main street open", "is bitcoin a good investment",
    "how many calories in a big mac", "what is the speed of light", "how do i train my puppy to sit",
    "which airline has the most legroom", "how do i file my taxes online",
)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower().replace("'s", "")).strip()


def _misspell(text: str, rng: random.Random) -> str:
    """One seeded edit (swap, drop or double a letter) in a word of 6+ letters, if there is one."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 6 and w.isalpha()]
    if not long:
        return text
    i = rng.choice(long)
    w, j = words[i], rng.randrange(1, len(words[i]) - 2)
    edit = rng.choice(("swap", "drop", "double"))
    words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:] if edit == "swap" else w[:j] + w[j + 1:] if edit == "drop" else w[:j] + w[j] + w[j:])
    return " ".join(words)


def removed_pages(pages: Iterable[dict[str, Any]], topics: Iterable[str]) -> list[str]:
    """Ids of every page whose focus is one of ``topics`` (normalised) or whose question names one."""
    wanted = {_norm(t) for t in topics}
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in sorted(wanted, key=len, reverse=True)) + r")\b") if wanted else None
    return [str(p["id"]) for p in pages
            if _norm(p["focus"]) in wanted or (pattern is not None and pattern.search(_norm(p["question"])))]


def _topic(focus: str) -> str:
    return re.sub(r"\s*\(.*?\)\s*", " ", focus).strip().lower()  # "Graves' disease (GD)" -> "graves' disease"


def build(*, answerable: int = 75, unanswerable: int = 50, off_topic: int = 10, seed: int = 0) -> list[Example]:
    """The dev set: per split (``tune``, ``test``), ``answerable`` rewritten questions on kept topics,
    ``unanswerable`` questions on removed topics and ``off_topic`` general questions (seeded).

    Each example's metadata: ``split``, ``answerable``, ``focus``, ``qtype``, ``doc_ids`` (the
    relevant pages; empty when unanswerable), ``rule`` (how the question was written); removed
    topics' pages are listed by :func:`removed_for` from the same examples.
    """
    from layered.pipelines.medical import KB_PATH, splits

    with gzip.open(KB_PATH, "rt", encoding="utf-8") as f:
        pages = [json.loads(line) for line in f]
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for p in pages:
        by_topic.setdefault(p["focus"], []).append(p)
    parts = splits()
    rng = random.Random(seed)
    out: list[Example] = []
    off = list(OFF_TOPIC)
    rng.shuffle(off)
    for name, examples in (("tune", parts.validation), ("test", parts.test)):
        topics = sorted({e.metadata["focus"] for e in examples})
        rng.shuffle(topics)
        gone = topics[:unanswerable]
        kept = [t for t in topics[unanswerable:] if any(p["qtype"] in REWRITES for p in by_topic.get(t, []))]
        gone_ids = set(removed_pages(pages, gone))
        for focus in kept[:answerable]:
            topic_pages = [p for p in by_topic[focus] if p["qtype"] in REWRITES and str(p["id"]) not in gone_ids]
            if not topic_pages:
                continue
            x = _topic(focus)
            qtypes = {p["qtype"] for p in topic_pages}
            pair = [c for c in PAIRS if c[0] in qtypes and c[1] in qtypes]
            if pair and rng.random() < 0.2:
                first, second, template = rng.choice(pair)
                question, want, rule = template.format(x=x), {first, second}, "two-in-one"
            else:
                page = rng.choice(topic_pages)
                question, want, rule = rng.choice(REWRITES[page["qtype"]]).format(x=x), {page["qtype"]}, "lay"
            if rng.random() < 0.35:
                question, rule = question.replace(x, _misspell(x, rng), 1), rule + "+misspelt"
            question = rng.choice(PREFIXES).format(x=x) + question
            doc_ids = sorted(str(p["id"]) for p in topic_pages if p["qtype"] in want)
            out.append(Example(question=question, answer="", metadata={
                "split": name, "answerable": True, "focus": focus, "qtype": "+".join(sorted(want)), "doc_ids": doc_ids, "rule": rule}))
        for focus in gone:
            x = _topic(focus)
            qtype = rng.choice(sorted(REWRITES))
            question = rng.choice(PREFIXES[:4]) + rng.choice(REWRITES[qtype]).format(x=x)
            out.append(Example(question=question, answer="", metadata={
                "split": name, "answerable": False, "focus": focus, "qtype": qtype, "doc_ids": [], "rule": "removed-topic"}))
        for question in off[:off_topic] if name == "tune" else off[off_topic:2 * off_topic]:
            out.append(Example(question=question, answer="", metadata={
                "split": name, "answerable": False, "focus": "", "qtype": "", "doc_ids": [], "rule": "off-topic"}))
    return out


def removed_for(examples: Iterable[Example]) -> list[str]:
    """The page ids to delete from the index before asking ``examples``: every page of their removed topics."""
    from layered.pipelines.medical import KB_PATH

    topics = [e.metadata["focus"] for e in examples if e.metadata.get("rule") == "removed-topic"]
    with gzip.open(KB_PATH, "rt", encoding="utf-8") as f:
        return removed_pages((json.loads(line) for line in f), topics)


def write(examples: Iterable[Example], path: Path = DEV_PATH) -> Path:
    """Write ``examples`` as JSONL (question + metadata), the format :func:`load` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"question": e.question, **e.metadata}, ensure_ascii=False) + "\n")
    return path


def load(path: Path = DEV_PATH, *, split: str | None = None) -> list[Example]:
    """The shipped dev set (``split``: ``tune`` or ``test``; None: both)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Example(question=r.pop("question"), answer="", metadata=r) for r in rows if split is None or r["split"] == split]
