"""The customer-support assistant: Contoso product manuals and ABCD agent guidelines as its
knowledge, a "policy" LoRA adapter tuned on Bitext support answers for its tone.

One keyword router decides both halves of a request: account, order, refund and shipping
questions go to the ``policy`` adapter and search only the agent guidelines; everything else
goes to the base model and searches only the product manuals (:class:`ScopedRetriever`).
Because the scope is chosen inside the retriever, the adapter is trained on the same scoped
prompts it serves. Bitext answers keep ``{{Order Number}}``-style slots; :func:`fill_slots`
fills them from request variables and leaves the others visible.

The ``policy`` adapter ships with the package (``data/adapters/support/``: weights, recipe,
training data and report, checked against a sha256 manifest), so ``layered demo support``
only indexes on its first run (seconds) and serves with llama.cpp, switching between the
base model and the adapter per routed question.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

from layered.artifacts import sha256_file
from layered.routing import KeywordRouter
from layered.pipeline import Pipeline
from layered.pipelines import cached_pipeline
from layered.prompts.template import ChatPromptTemplate
from layered.tuning.data import Splits
from layered.types import Answer, Document

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data" / "support"
MANUALS = DATA / "contoso_manuals"
GUIDELINES = DATA / "abcd_guidelines.json"
BITEXT = DATA / "bitext_support_sample.csv"
ATTRIBUTION = ("Contoso product manuals (Azure-Samples/contoso-chat, MIT); ABCD agent guidelines (Chen et al., NAACL 2021, MIT); "
               "Bitext customer-support pairs (CDLA-Sharing-1.0)")

PROMPT = ChatPromptTemplate(
    system="You are a friendly customer-support agent for Contoso Outdoors, a shop for outdoor gear. "
           "Answer from the numbered passages and cite them as [1], [2].",
    abstain=True,
)
ROUTER = KeywordRouter({"policy": [
    "refund", "return", "order", "cancel", "account", "password", "username", "shipping", "delivery", "invoice",
    "payment", "subscription", "address", "charge", "membership",
]}, default="base")
SCOPES = {"policy": "policy", "base": "product"}

DEMO_QUESTIONS: tuple[tuple[str, dict[str, str]], ...] = (
    ("What is the warranty on the TrailMaster X4 Tent?", {}),
    ("How do I cancel my order?", {}),
    ("How do I get a refund for a damaged backpack?", {}),
    ("What is the warranty on the Contoso Electric Bike?", {}),  # not a product the shop sells: declined
)

_SLOT = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


#: What the shop's answers may say about the shop itself: fills the ``{{...}}`` slots of answers.
SHOP = {"Company Name": "Contoso Outdoors", "Website Name": "the Contoso Outdoors website", "Website URL": "the Contoso Outdoors website",
        "Customer Support Phone Number": "our customer support line", "Customer Support Hours": "our support hours",
        "Online Company Portal Info": "your Contoso Outdoors account", "Online Order Interaction": "Order History"}


def fill_slots(text: str, values: Mapping[str, Any], *, shop: Mapping[str, str] | None = None) -> str:
    """Replace ``{{Name}}`` slots with ``values["Name"]``, else ``shop["Name"]`` (:data:`SHOP` by default);
    unknown slots stay as they are (:func:`no_placeholders` words them for a customer)."""
    known = {**(SHOP if shop is None else shop), **{k: str(v) for k, v in values.items()}}
    return _SLOT.sub(lambda m: known.get(m.group(1), m.group(0)), text)


def no_placeholders(text: str) -> str:
    """``text`` with every ``{{Name}}`` slot still in it worded for a customer ("your order number"):
    no template slot reaches a customer."""
    return _SLOT.sub(lambda m: "your " + m.group(1).strip().lower(), text)


def guideline_documents(path: Path = GUIDELINES) -> list[Document]:
    """One document per ABCD subflow: the flow, the subflow and its numbered agent steps."""
    flows = json.loads(path.read_text(encoding="utf-8"))
    docs = []
    for flow, body in flows.items():
        for subflow, content in body.get("subflows", {}).items():
            steps = []
            for i, action in enumerate(content.get("actions", []), start=1):
                extra = "; ".join(action.get("subtext") or [])
                steps.append(f"{i}. {action.get('text', '').strip()}" + (f" ({extra})" if extra else ""))
            text = f"{flow} ({body.get('description', '')}): {subflow}\n" + "\n".join(steps)
            docs.append(Document(id=f"abcd/{flow}/{subflow}", text=text, source="ABCD agent guidelines",
                                 metadata={"scope": "policy", "flow": flow, "subflow": subflow, "subject": f"{flow}: {subflow}"}))
    return docs


def manual_documents(folder: Path = MANUALS) -> list[Document]:
    """The Contoso product manuals, headings kept as metadata, scoped ``product``."""
    from layered.retrieval.loaders import load_documents

    return [Document(id=d.id, text=d.text, source=d.source, metadata={**d.metadata, "scope": "product", "subject": product_name(d.text)})
            for d in load_documents(folder, include=["*.md"])]


def product_name(manual: str) -> str:
    """The product a Contoso manual is about: its second line up to the price ("TrailMaster X4 Tent")."""
    lines = [line.strip() for line in manual.splitlines() if line.strip()]
    return lines[1].split(",")[0].strip() if len(lines) > 1 else ""


#: The answerability decision fitted on the support dev set's ``tune`` split (see ``medical.ANSWERABILITY_PATH``).
ANSWERABILITY_PATH = DATA.parent / "support_answerability.json"


def answerability() -> Any:
    """The shipped answerability decision, or None before one was fitted."""
    from layered.answerability import Answerability

    return Answerability.from_file(ANSWERABILITY_PATH) if ANSWERABILITY_PATH.exists() else None


#: The embedder's precision: fp32 on every CPU, as the medical assistant's (``medical.EMBED_PRECISION``).
EMBED_PRECISION = "float32"


def build(*, progress: bool = False, max_new_tokens: int = 120) -> Pipeline:
    """A fresh support pipeline (indexed, no adapter)."""
    from layered.generation.transformers_generator import TransformersGenerator
    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.dense import DenseRetriever
    from layered.retrieval.embedders import SentenceTransformerEmbedder
    from layered.retrieval.scoped import ScopedRetriever

    # EMBED_PRECISION: the shipped adapter was trained on the passages this retrieval finds, and
    # its recipe reproduces it only with them.
    embedder = SentenceTransformerEmbedder(precision=EMBED_PRECISION)
    dense = DenseRetriever(embedder=embedder, chunker=TokenChunker(size=200, overlap=40, tokenizer=embedder.tokenizer()))
    retriever = ScopedRetriever(dense, ROUTER, SCOPES)
    retriever.add_documents([*manual_documents(), *guideline_documents()], progress=progress)
    return Pipeline(generator=TransformersGenerator(max_new_tokens=max_new_tokens), retriever=retriever, prompt=PROMPT,
                    k=3, router=ROUTER, abstain=answerability(), metadata={"bitext_sha256": sha256_file(BITEXT), "embed_precision": EMBED_PRECISION})


def policy_splits() -> Splits:
    """The bundled Bitext pairs that route to ``policy``, split 80/10/10 by intent (seeded).

    The adapter trains on ``train`` (validation: the first 24 of ``validation``); ``test``
    is held out for ``layered compare support``. No pair has relevance judgements against
    the manuals or guidelines, so retrieval metrics do not apply to it.
    """
    from layered.tuning.data import clean, load_examples, split

    examples, _ = clean(load_examples(BITEXT, keep=["intent"]), max_chars=1200)
    examples = [e for e in examples if ROUTER.route(e.question) == "policy"]
    return split(examples, by="intent", validation=0.1, test=0.1, seed=0)


def recipe() -> dict[str, Any]:
    """The policy adapter's recipe: LoRA rank 8 (alpha 16) on every linear layer, 30 steps of 4."""
    from layered.adapters.config import ALL_LINEAR

    return {"method": "lora", "rank": 8, "alpha": 16.0, "target_modules": list(ALL_LINEAR), "learning_rate": 1e-3,
            "batch_size": 4, "max_steps": 30, "eval_every": 15, "checkpoint_every": 30, "seed": 0,
            "dropout_masks": "torch",  # the random stream the shipped adapter was trained with
            "precision": "float32"}  # as the medical recipe's


#: The name the shipped policy adapter is trained and served under (the router's pick for policy questions).
ADAPTER = "policy"


def with_adapter(pipe: Pipeline) -> Pipeline:
    """``pipe`` (transformers, no adapter) with the shipped ``policy`` adapter; the router picks it per question."""
    from layered.pipelines.shipped import ShippedAdapter

    ShippedAdapter.named("support").install(pipe.generator, ADAPTER, default=False)
    return pipe


def ask(pipe: Pipeline, question: str, **slots: Any) -> Answer:
    """Answer with the routed adapter and scope; ``slots`` fill ``{{...}}`` in the answer.

    Every answer keeps only the sentences its passages (manuals or guideline procedures) support,
    quoting the best passage, cited, when none is left: the policy adapter's Bitext phrasing is not
    the shop's procedure, so it is not shown on its own. A question no passage answers (the shop's
    answerability decision) is declined, naming what was found. No ``{{slot}}`` reaches the customer:
    ``slots`` fill them, then :data:`SHOP`, then :func:`no_placeholders` words the rest.
    """
    answer = pipe.replace(grounding="drop").ask(question)
    return dataclasses.replace(answer, text=no_placeholders(fill_slots(answer.text, slots)))


def load_or_build(cache: Path, *, rebuild: bool = False, progress: bool = False, adapter: bool = True) -> tuple[Pipeline, bool]:
    """The support pipeline (transformers backend) from the cached index when intact and built
    from this exact data, else a newly indexed one saved to ``cache``; ``(pipeline, reused)``.

    With ``adapter`` the shipped ``policy`` adapter is installed (from the package, never the cache).
    """
    pipe, reused = cached_pipeline(cache, name="support", expect={"bitext_sha256": sha256_file(BITEXT), "embed_precision": EMBED_PRECISION}, rebuild=rebuild,
                                   build=lambda: build(progress=progress))
    if reused:
        pipe = pipe.replace(abstain=answerability())
    return (with_adapter(pipe) if adapter else pipe), reused
