"""Right or silent, measured: fit the medical assistant's answerability decision on the dev set's
``tune`` split, then compare strategies on its ``test`` split (never tuned on).

    .venv/bin/python benchmarks/right_or_silent.py {medical,support} [--fit] [--limit N]

``--fit`` refits the decision and rewrites ``pipelines/data/<task>_answerability.json`` (weights,
threshold, the dev set's sha256 and the labelled rows); without it the shipped one is used.
The index is the cached demo index with every page of the dev set's removed topics deleted (in
memory; the cache is not rewritten), so those topics' questions are unanswerable by construction.
For support the index is the demo's (manuals and guidelines); its out-of-scope questions have no
answering document. Writes ``benchmarks/results/right-or-silent-<task>/`` (comparison.md/.json/.png, sweep.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def prepare(task: str) -> tuple[Any, list[Any], list[Any], Path, str, dict[str, str], Path]:
    """``(pipeline, tune, test, answerability file, adapter, ask variables, dev-set file)`` for ``task``."""
    from layered.pipelines import cache_folder, medical, medical_dev, support, support_dev

    t = time.perf_counter()
    if task == "medical":
        dev = medical_dev.load()
        pipe, _ = medical.load_or_build(cache_folder("medical"), progress=True)
        gone = pipe.delete_documents(medical_dev.removed_for(dev))
        logging.info("%d pages of %d removed topics deleted from the index (in memory)", gone,
                     sum(e.metadata["rule"] == "removed-topic" for e in dev))
        path, adapter, variables, dev_path = medical.ANSWERABILITY_PATH, medical.ADAPTER, {"audience": "patient"}, medical_dev.DEV_PATH
    else:
        dev = support_dev.load()
        pipe, _ = support.load_or_build(cache_folder("support"), progress=True)
        path, adapter, variables, dev_path = support.ANSWERABILITY_PATH, support.ADAPTER, {}, support_dev.DEV_PATH
    logging.info("pipeline ready in %.0fs", time.perf_counter() - t)
    return (pipe, [e for e in dev if e.metadata["split"] == "tune"], [e for e in dev if e.metadata["split"] == "test"], path, adapter,
            variables, dev_path)


def run(args: argparse.Namespace) -> None:
    from layered.answerability import Answerability, calibrate
    from layered.artifacts import atomic_write_json, sha256_file
    from layered.evaluation.comparison import bar_chart, compare, markdown_table
    from layered.pipelines import cache_folder

    pipe, tune, test, path, adapter, variables, dev_path = prepare(args.task)
    if args.sample:  # the first N answerable, N/2 removed-topic and N/4 off-topic (or out-of-scope) questions, in order
        n = args.sample
        answerable = [e for e in test if e.metadata["answerable"]][:n]
        others = [e for e in test if not e.metadata["answerable"]]
        kinds = {str(e.metadata.get("rule", e.metadata.get("kind"))) for e in others}
        test = answerable + [e for kind in sorted(kinds) for e in [o for o in others if o.metadata.get("rule", o.metadata.get("kind")) == kind]
                             [: n // 2 if kind == "removed-topic" else n // 4]]
    out = ROOT / "benchmarks" / "results" / f"right-or-silent-{args.task}"
    out.mkdir(parents=True, exist_ok=True)
    if args.fit:
        # The shipped adapters were trained on the retriever's passages in its order: the decision gates
        # (answer or decline) and leaves the prompt as it was (reorder=False, keep=0), so they serve what they learnt.
        cal = calibrate(lambda q: pipe.retrieve(q), tune, embed=pipe.retriever.embedder.embed, max_answered_unanswerable=args.max_unanswered,
                        reorder=False, keep=0.0,
                        report={"dev_set": dev_path.name, "dev_sha256": sha256_file(dev_path), "split": "tune", "k": pipe.k,
                                "recipe": "layered.answerability.calibrate(pipe.retrieve, tune, embed=pipe.retriever.embedder.embed, "
                                f"max_answered_unanswerable={args.max_unanswered}, reorder=False, keep=0.0)"})
        atomic_write_json(path, {**cal.answerability.to_dict(), "rows": cal.rows})
        atomic_write_json(out / "sweep.json", cal.sweep)
        logging.info("fitted %s", json.dumps(cal.answerability.to_dict()["report"]))
    if args.fit_only:
        return
    decision = Answerability.from_file(path)
    pipe = pipe.replace(abstain=decision).serve_with("llamacpp", adapter_dir=cache_folder(args.task).with_name(f"demo-{args.task}.lora"))
    strategies = tuple(args.strategies.split(","))
    results = compare(pipe, test, adapter=adapter, strategies=strategies, variables=variables, progress=True)
    table = markdown_table(results)
    print(table)
    (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    atomic_write_json(out / "comparison.json", {"test_questions": len(test), "answerable": sum(e.metadata["answerable"] for e in test),
                                                "answerability": decision.to_dict(), "results": [r.to_dict() for r in results]})
    bar_chart(results, out / "comparison.png", title=f"right or silent: {len(test)} {args.task} dev-test questions")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["medical", "support"])
    parser.add_argument("--fit", action="store_true", help="refit the answerability decision on the tune split")
    parser.add_argument("--fit-only", action="store_true", help="with --fit: stop after fitting (no comparison)")
    parser.add_argument("--sample", type=int, default=0, help="answer only the first N answerable test questions, N/2 removed-topic "
                        "and N/4 off-topic ones (0: all)")
    parser.add_argument("--strategies", default="rag,rag+adapter,rag+adapter+abstain", help="comma-separated rows to compare")
    parser.add_argument("--max-unanswered", type=float, default=0.15, help="largest share of unanswerable tune questions answered")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
