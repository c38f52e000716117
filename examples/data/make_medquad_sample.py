"""Rebuild the bundled MedQuAD files (run once by maintainers, never at run time).

    python examples/data/make_medquad_sample.py PATH/TO/medquad.jsonl.gz

Writes ``pipelines/data/medquad.jsonl.gz``, all 16,407 pairs (the medical assistant's
knowledge base), and ``pipelines/data/medquad_sample.jsonl`` (the tests' small sample).
In the full file an id that MedQuAD repeats within one source gets ``~2``, ``~3``... in file
order; gzip is written with mtime 0 so the file (and its sha256) is reproducible.

The sample:
Keeps whole topics (all question types of a focus together), always including the topics
the demo asks about, then random topics (seed 0) until about 1,000 QA pairs; answers longer
than 4,000 characters are skipped to keep the file small. Ids are ``SOURCE-ID`` because
MedQuAD's own ids repeat across its sources.
"""

import gzip
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

ALWAYS = ["graves", "high blood pressure", "shingles", "glaucoma", "asthma", "osteoporosis"]
TARGET, MAX_CHARS = 1000, 4000
OUT = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "medquad_sample.jsonl"
FULL = OUT.with_name("medquad.jsonl.gz")
FIELDS = ("source", "url", "focus", "qtype", "question", "answer")


def write_full(rows: list[dict]) -> None:
    seen: dict[str, int] = {}
    with open(FULL, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        for r in rows:
            key = f"{r['source']}-{r['id']}"
            seen[key] = seen.get(key, 0) + 1
            rec = {"id": key if seen[key] == 1 else f"{key}~{seen[key]}", **{k: r[k] for k in FIELDS}}
            f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"wrote {len(rows)} QA pairs to {FULL}")


def main(src: str) -> None:
    rows = [json.loads(line) for line in gzip.open(src, "rt", encoding="utf-8")]
    write_full(rows)
    by_focus = defaultdict(list)
    for r in rows:
        if r["answer"].strip() and len(r["answer"]) <= MAX_CHARS:
            by_focus[(r["source"], r["focus"])].append(r)
    keys = sorted(by_focus)
    chosen = [k for k in keys if any(a in k[1].lower() for a in ALWAYS)][:40]
    rest = [k for k in keys if k not in chosen]
    random.Random(0).shuffle(rest)
    picked = [r for k in chosen for r in by_focus[k]]
    for k in rest:
        if len(picked) >= TARGET:
            break
        picked.extend(by_focus[k])
    picked.sort(key=lambda r: (r["source"], r["id"]))
    with open(OUT, "w", encoding="utf-8") as f:
        for r in picked:
            # MedQuAD ids repeat across sources, so the sample's id is prefixed with the source.
            rec = {"id": f"{r['source']}-{r['id']}", **{k: r[k] for k in ("source", "url", "focus", "qtype", "question", "answer")}}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {len(picked)} QA pairs to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
