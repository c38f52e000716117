"""Right or silent, measured: fit the medical assistant's answerability decision on the dev set's
``tune`` split, then compare strategies on its ``test`` split (never tuned on).

    .venv/bin/python benchmarks/right_or_silent.py medical [--fit] [--limit N]

``--fit`` refits the decision and rewrites ``pipelines/data/medical_answerability.json`` (weights,
threshold, the dev set's sha256 and the labelled rows); without it the shipped one is used.
The index is the cached demo index with every page of the dev set's removed topics deleted (in
memory; the cache is not rewritten), so those topics' questions are unanswerable by construction.
Writes ``benchmarks/results/right-or-silent-medical/`` (comparison.md/.json/.png, sweep.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def medical(args: argparse.Namespace) -> None:
    from layered.answerability import Answerability, calibrate
    from layered.artifacts import atomic_write_json, sha256_file
    from layered.evaluation.comparison import bar_chart, compare, markdown_table
    from layered.pipelines import cache_folder, medical, medical_dev

    dev = medical_dev.load()
    tune = [e for e in dev if e.metadata["split"] == "tune"]
    test = [e for e in dev if e.metadata["split"] == "test"][: args.limit or None]
    t = time.perf_counter()
    pipe, _ = medical.load_or_build(cache_folder("medical"), progress=True)
    removed = medical_dev.removed_for(dev)
    gone = pipe.delete_documents(removed)
    logging.info("pipeline ready in %.0fs; %d pages of %d removed topics deleted from the index (in memory)", time.perf_counter() - t,
                 gone, sum(e.metadata["rule"] == "removed-topic" for e in dev))
    out = ROOT / "benchmarks" / "results" / "right-or-silent-medical"
    out.mkdir(parents=True, exist_ok=True)
    if args.fit:
        cal = calibrate(lambda q: pipe.retrieve(q), tune, max_answered_unanswerable=args.max_unanswered,
                        report={"dev_set": medical_dev.DEV_PATH.name, "dev_sha256": sha256_file(medical_dev.DEV_PATH), "split": "tune",
                                "k": pipe.k, "recipe": "layered.answerability.calibrate(pipe.retrieve, tune, "
                                f"max_answered_unanswerable={args.max_unanswered})"})
        atomic_write_json(medical.ANSWERABILITY_PATH, {**cal.answerability.to_dict(), "rows": cal.rows})
        atomic_write_json(out / "sweep.json", cal.sweep)
        logging.info("fitted %s", json.dumps(cal.answerability.to_dict()["report"]))
    decision = Answerability.from_file(medical.ANSWERABILITY_PATH)
    pipe = pipe.replace(abstain=decision).serve_with("llamacpp", adapter_dir=cache_folder("medical").with_name("demo-medical.lora"))
    strategies = ("rag", "rag+adapter", "rag+abstain", "rag+adapter+abstain")
    results = compare(pipe, test, adapter=medical.ADAPTER, strategies=strategies, variables={"audience": "patient"}, progress=True)
    table = markdown_table(results)
    print(table)
    (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    atomic_write_json(out / "comparison.json", {"test_questions": len(test), "answerable": sum(e.metadata["answerable"] for e in test),
                                                "answerability": decision.to_dict(), "results": [r.to_dict() for r in results]})
    bar_chart(results, out / "comparison.png", title=f"right or silent: {len(test)} medical dev-test questions")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["medical"])
    parser.add_argument("--fit", action="store_true", help="refit the answerability decision on the tune split")
    parser.add_argument("--limit", type=int, default=0, help="answer only the first N test questions (0: all)")
    parser.add_argument("--max-unanswered", type=float, default=0.1, help="largest share of unanswerable tune questions answered")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    medical(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
