"""How the ``layered`` command prints an answer (``ask`` and ``demo``): text, sources, checks."""

from __future__ import annotations

from layered.types import Answer


def print_answer(answer: Answer) -> None:
    """Print ``answer`` for a person (stdout): its text, its sources with what it cited, and what the checks did."""
    print(answer.text)
    cited = {c.number for c in answer.citations}
    if answer.sources:
        print("Sources:")
        for s in answer.sources:
            mark = "*" if s.number in cited else " "
            print(f" {mark}[{s.number}] {s.chunk_id}  {s.source}  (score {s.score:.3f})")
        how = "cited by the model" if answer.metadata.get("citation_mode") == "model" else "supported by overlap"
        print(f" (* = {how})")
    decided = answer.metadata.get("answerability")
    if answer.metadata.get("refused") and decided:
        print(f" (declined: no passage answers it; the best scored {decided['score']:.2f}, the threshold is {decided['threshold']:.2f})")
    grounding = answer.metadata.get("grounding")
    if grounding and grounding["fallback"]:
        print(" (nothing the model wrote was in the passages: quoting the best passage instead)")
    elif grounding and grounding["unsupported"] and grounding["mode"] == "drop":
        for sentence in grounding["unsupported"]:
            print(f" (dropped, not in the passages: {sentence})")
    elif grounding and grounding["unsupported"]:
        print(f" ({len(grounding['unsupported'])} of {grounding['sentences']} sentences are not in the passages shown)")
