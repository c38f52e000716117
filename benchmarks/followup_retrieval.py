"""Follow-up retrieval: does a history-aware query find the page a follow-up question needs?

On ``benchmarks/data/followups.jsonl`` (40 hand-written two-turn conversations on MedQuAD
topics, e.g. "What is Graves disease?" ... "How is it treated?"), each query method of
:func:`layered.prompts.conversation.standalone_query` is run and the medical assistant's
retriever (all 16,407 bundled MedQuAD pages, the index ``layered demo medical`` cached) searches
for it. hit@4: one of the gold pages (that topic's pages of the follow-up's kind) is among
the top 4 passages. ``condense`` asks the packaged SmolLM2-135M on llama.cpp to rewrite the
follow-up. The default method was chosen on this same set (there is no held-out split).

    python benchmarks/followup_retrieval.py [--cache DIR] [--out benchmarks/results/followup_retrieval.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from layered.models import cache_dir
from layered.prompts.conversation import DEFAULT_QUERY, QUERY_METHODS, checked_messages, standalone_query

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "followups.jsonl"
K = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=cache_dir() / "demo-medical")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "followup_retrieval.md")
    parser.add_argument("--methods", default=",".join(QUERY_METHODS))
    args = parser.parse_args()

    from layered.pipelines.medical import load_or_build

    pipe, reused = load_or_build(args.cache, adapter=False)
    assert reused, f"no cached medical index in {args.cache}; run `layered demo medical` once"
    conversations = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    generator = None
    kinds = ("follow-up", "new-topic")
    rows, examples = [], []
    for method in args.methods.split(","):
        if method == "condense" and generator is None:
            generator = pipe.serve_with("llamacpp").generator
            generator.warm_up()
        score = {kind: [0, 0, 0] for kind in kinds}  # hit@1, hit@4, count
        seconds = 0.0
        for conv in conversations:
            turns = checked_messages(conv["messages"])
            t = time.perf_counter()
            query = standalone_query(turns, method=method, generator=generator)
            seconds += time.perf_counter() - t
            found = [h.chunk.doc_id for h in pipe.retriever.retrieve(query, k=K)]
            gold, s = set(conv["gold"]), score[conv["kind"]]
            s[0] += bool(found[:1] and found[0] in gold)
            s[1] += bool(gold & set(found))
            s[2] += 1
            if conv["topic"] in ("Graves disease", "gout", "dry eye", "glaucoma"):
                examples.append((method, conv["messages"][0]["content"], conv["messages"][-1]["content"], query))
        row = [method] + [s[i] / s[2] for kind in kinds for s in [score[kind]] for i in (1, 0)]
        rows.append((*row, 1000 * seconds / len(conversations)))
        print(" ".join(str(round(v, 3)) if isinstance(v, float) else v for v in rows[-1]), flush=True)

    n = {kind: sum(c["kind"] == kind for c in conversations) for kind in kinds}
    lines = [
        "# Follow-up retrieval", "",
        f"{n['follow-up']} two-turn conversations on MedQuAD topics whose follow-up never names the topic",
        f"(`benchmarks/data/followups.jsonl`, \"follow-up\"), plus {n['new-topic']} whose second question switches to a new,",
        "named topic (\"new-topic\": history must not hurt a standalone question). Retrieval: the medical assistant's",
        "retriever over all 16,407 bundled MedQuAD pages (MiniLM, one passage per page). hit@k: a gold page (the topic's",
        f"pages of the question's kind) in the top k. `{DEFAULT_QUERY}` is the default; it was chosen on this same set",
        "(no held-out split). Query time: mean per conversation on this machine's 2 CPU cores.", "",
        "| query method | follow-up hit@4 | follow-up hit@1 | new-topic hit@4 | new-topic hit@1 | query time (ms) |",
        "|---|---|---|---|---|---|",
        *[f"| `{r[0]}`{' (default)' if r[0] == DEFAULT_QUERY else ''} | " + " | ".join(f"{v:.3f}" for v in r[1:5]) + f" | {r[5]:.1f} |"
          for r in rows],
        "", "Methods: `last` = the bare final question; `append` = the previous user turns (up to 2), then the question;",
        "`resolve` = the topic of the previous question put in place of the question's pronoun (or appended when it has",
        "none); `condense` = SmolLM2-135M (llama.cpp, greedy) rewrites the question as a standalone one.", "",
        "Example queries:", "",
        *[f"- `{m}`: {a!r} then {q!r} -> {s!r}" for m, a, q, s in examples], "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
