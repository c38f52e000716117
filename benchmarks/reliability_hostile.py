"""Issue 18's hostile-input probe, rerun: the server, saved folders, injection and loaders.

    .venv/bin/python benchmarks/reliability_hostile.py [--out benchmarks/results/reliability.md]

Runs the hostile test files with pytest (real loopback server, raw sockets, real files, the
tiny in-memory model, one llama.cpp test on the packaged GGUF; about a minute), groups every test
case by the threat it probes, and
writes the table of ``../shared/RELIABILITY.md`` (threat, anchor, cases tried, held, rerun
command). A case "held" when its test passed; hypothesis properties count once per property
with the number of random examples each tried.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["tests/serving/test_server_hostile.py", "tests/core/test_saved_folders_hostile.py",
         "tests/prompts/test_injection_hostile.py", "tests/retrieval/test_loaders_hostile.py", "tests/core/test_hostile_properties.py"]
EXAMPLES = 60  # hypothesis examples per property (tests/core/test_hostile_properties.py FUZZ)

# (area, threat, anchor, test-name fragments)
THREATS = [
    ("server", "Request smuggling / desync, ambiguous user header (item 1)", "RFC 9112 §6.3; PortSwigger desync", ["early_error", "repeated_user"]),
    ("server", "Negative / duplicate / non-numeric Content-Length (item 2)", "RFC 9110 §8.6; h11", ["content_length"]),
    ("server", "5xx from client input (item 3, 9: ports)", "OpenAI API error contract", ["client_input_never", "unknown_methods", "max_tokens", "port_out"]),
    ("server", "Random JSON, headers, bytes (property)", "hypothesis", ["random_json_gets", "random_requests", "random_bytes_on_the_socket"]),
    ("server", "Abandoned streams (item 4)", "vLLM aborts on disconnect", ["disconnect", "closing_a_transformers", "closing_a_llamacpp"]),
    ("folders", "Crafted config sends secrets (item 5)", "CWE-918; LangChain allowed_objects", ["crafted_folder", "endpoints_nested"]),
    ("folders", "Manifest paths, symlinks, malformed configs (items 5, 9)", "CVE-2024-3571 (path traversal)", ["manifest", "symlinks", "malformed_saved", "list_as_pipeline"]),
    ("folders", "Milvus index changed outside the folder (item 5)", "milvus-lite Known Limitations", ["milvus"]),
    ("folders", "Crash between the renames; fsync before delete (item 6)", "transformers #36112; faiss#1623", ["crash_between", "fsynced"]),
    ("injection", "Chat-template token injection (item 7)", "OWASP LLM01; llama.cpp parse_special", ["control_tokens", "defused"]),
    ("injection", "Look-alike injections flagged; suspects on streams (item 7)", "OWASP LLM01; BIPIA", ["look_alike", "ordinary_text", "streamed", "server_streams"]),
    ("loaders", "Resource exhaustion by input (item 8)", "LlamaIndex CVE-2025-5302; gzip bombs", ["gzip_bomb", "giant", "no_chunk"]),
    ("loaders", "Tracebacks instead of one line (item 9)", "DESIGN: clear errors", ["malformed_files", "pdfs_that", "file_name", "index_out", "serve_port"]),
    ("loaders", "Silent data loss (item 10)", "DESIGN: nothing lost", ["jsonl_strings", "csv_fields", "html_without", "hidden_html", "all_nul"]),
    ("loaders", "Random files, JSONL, CSV, HTML (property)", "hypothesis", ["random_bytes_in_any", "random_json_structures", "random_csv", "random_html"]),
]


# Measured once, by running the same test files against the code before issue 18 (commit 983c361).
BEFORE = """Seen failing on the code before the fix (commit 983c361; the tests were written first):
server 37 of the 48 cases run there (every smuggling variant with a 404/405/400/200-without-body
early answer, every 5xx-from-input case, unknown methods, max_tokens, ports); the transformers stream
ran on for the whole answer after close() (0.51 s for 300 tokens vs one step); folders 25 of 28
(a crafted folder sent the operator's key as a bearer token to its base_url; manifest paths outside
the folder, symlinks, malformed configs, the Milvus change, the crash-then-index loss, the missing
fsyncs); injection 19 of 23 (the passage's and the question's control tokens reached both backends'
token ids as control tokens; 14 look-alike phrasings unflagged; no suspects on streams); loaders 18
of 22 (gzip bomb and giant line read whole, a 300,000-character chunk, 8 tracebacks, 5 silent
losses); properties 3 of 7 (a PUT got an HTML 501; random JSONL and CSV raised errors outside
LayeredError, e.g. TypeError on a CSV row with extra fields)."""


def run(xml: Path) -> list[tuple[str, bool]]:
    cmd = [sys.executable, "-m", "pytest", *FILES, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, check=False)
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        failed = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        if not skipped:
            cases.append((case.get("name", ""), not failed))
    return cases


def table(cases: list[tuple[str, bool]]) -> str:
    rows, seen = [], set()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for area, threat, anchor, fragments in THREATS:
        mine = [(n, ok) for n, ok in cases if n not in seen and any(f in n for f in fragments)]
        seen.update(n for n, _ in mine)
        tried, held = len(mine), sum(ok for _, ok in mine)
        prop = anchor == "hypothesis"
        figure = f"{tried} properties x {EXAMPLES} random examples" if prop else f"{tried} cases"
        rows.append(f"| {area} | {threat} | {anchor} | {figure} | {held}/{tried} held |")
        totals[area][0] += tried
        totals[area][1] += held
    unmapped = [n for n, _ in cases if n not in seen]
    lines = ["| area | threat | anchor | tried | held |", "|---|---|---|---|---|", *rows]
    summary = ", ".join(f"{a}: {h}/{t}" for a, (t, h) in totals.items())
    return "\n".join(lines) + f"\n\nTotals (cases held / tried): {summary}." + (f"\nUnmapped: {unmapped}" if unmapped else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reliability.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = run(Path(tmp) / "junit.xml")
    text = (
        "# Reliability: hostile input (issue 18)\n\n"
        "Rerun: `.venv/bin/python benchmarks/reliability_hostile.py` (or the tests alone: "
        f"`.venv/bin/python -m pytest {' '.join(FILES)}`).\n\n{table(cases)}\n\n{BEFORE}\n"
    )
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
