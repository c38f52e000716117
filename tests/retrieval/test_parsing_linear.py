"""Small inputs must not take the machine: loaders and chunkers are linear in their input
(issue 40, items 1 and 2).

Timings are ratios, never wall-clock budgets: each case times the same code on an input and
on one ``FACTOR`` times longer (CPU time of this process, best of several runs, each run long
enough to measure), so a linear parser grows about ``FACTOR``-fold and a quadratic one about
``FACTOR**2``-fold whatever the machine's speed or load.
"""

from __future__ import annotations

import random
import time
import tracemalloc
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layered.retrieval.chunkers import TokenChunker, sentence_spans
from layered.retrieval.formats import html_text, markdown_metadata
from layered.retrieval.loaders import load_documents
from layered.types import Document

FACTOR = 8
#: Linear code grows ~8x; allow 3x that for noise and cache effects; quadratic is ~64x.
MAX_GROWTH = 3 * FACTOR


def cpu_seconds(work: Callable[[], object], *, reps: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for _ in range(reps):
            work()
        best = min(best, time.process_time() - t)
    return best


def growth(work: Callable[[str], object], make: Callable[[int], str], n: int) -> float:
    """How much longer ``work`` takes on ``make(FACTOR * n)`` than on ``make(n)``."""
    small, big = make(n), make(FACTOR * n)
    reps = 1
    while cpu_seconds(lambda: work(small), reps=reps) < 0.02 and reps < 4096:
        reps *= 2
    return cpu_seconds(lambda: work(big), reps=reps) / max(cpu_seconds(lambda: work(small), reps=reps), 1e-9)


def _index_file(tmp_path, name: str) -> Callable[[str], object]:
    """Load and chunk ``text`` as the file ``name``: what `layered index` does before embedding."""
    chunker = TokenChunker(size=64, overlap=8)

    def work(text: str) -> object:
        path = tmp_path / name
        path.write_text(text)
        return chunker.split(load_documents(path))
    return work


# -- item 1: the Markdown heading that took 6 minutes ------------------------------------------

HEADING_CASES = {
    "title, spaces, a letter": lambda n: "# Title" + " " * n + "a\n",
    "title, spaces, hashes": lambda n: "# Title" + " #" * (n // 2) + " x\n",
    "hash run": lambda n: "#" * n + " x\n",
    "tabs and newlines": lambda n: "# \t" * (n // 3) + "\n",
    "many headings": lambda n: "# a  #  \n" * (n // 9),
}


@pytest.mark.parametrize("make", HEADING_CASES.values(), ids=HEADING_CASES.keys())
def test_markdown_headings_are_linear(make):
    assert growth(markdown_metadata, make, 200) < MAX_GROWTH


def test_the_reported_heading_indexes_as_fast_as_plain_text(tmp_path):
    # The file: '# Title', 5,000 spaces and a letter (6 min 01 s before).
    work = _index_file(tmp_path, "t.md")
    assert growth(work, lambda n: "# Title" + " " * n + "a\n\nbody text here.\n", 600) < MAX_GROWTH
    (doc,) = load_documents(_write(tmp_path / "r.md", "# Title" + " " * 5000 + "a\n"))
    assert doc.metadata["title"] == "Title" + " " * 5000 + "a"


def test_headings_are_read_as_before():
    text = "# One\n## Two ##\n### C# notes\n#### closed #\n#no space\n    # indented code\n####### seven\n# \n"
    assert markdown_metadata(text) == {"title": "One", "headings": ["One", "Two", "C# notes", "closed"]}


def test_front_matter_is_linear():
    from layered.retrieval.formats import front_matter

    assert growth(lambda t: front_matter(t), lambda n: "---\n" + "k: v\n" * (n // 5) + "---\nbody", 2000) < MAX_GROWTH
    assert growth(lambda t: front_matter(t), lambda n: "---\n" + "- x\n" * (n // 4), 2000) < MAX_GROWTH


# -- item 2: quadratic HTML --------------------------------------------------------------------

HTML_CASES = {
    "open divs then stray end tags": lambda n: "<div>" * (n // 9) + "</b>" * (n // 9),
    "nested then closed": lambda n: "<div><span>" * (n // 24) + "</div>" * (n // 24),
    "unfinished start tags": lambda n: "<a" * (n // 2),
    "unfinished end tags": lambda n: "</" * (n // 2),
    "processing instructions": lambda n: "<?" * (n // 2),
    "cdata openers": lambda n: "<![CDATA[" * (n // 9),
    "unclosed quotes": lambda n: '<a b="x ' * (n // 8),
    "lone angle brackets": lambda n: "a < b " * (n // 6),
    "script end lookalikes": lambda n: "<script>" + "</scrip" * (n // 7),
    "charrefs": lambda n: "&#x" * (n // 3),
}


@pytest.mark.parametrize("make", HTML_CASES.values(), ids=HTML_CASES.keys())
def test_html_parsing_is_linear(make):
    assert growth(html_text, make, 4000) < MAX_GROWTH


def test_the_reported_html_indexes_in_linear_time(tmp_path):
    # 100,000 <div> then 100,000 stray </b> (900 KB) was still indexing at 300 s.
    markup = "<div>" * 100_000 + "</b>" * 100_000 + "<p>the end</p>"
    t = time.process_time()
    text, _ = html_text(markup)
    reported = time.process_time() - t
    plain = "<p>word</p>" * (len(markup) // 11)
    t = time.process_time()
    html_text(plain)
    baseline = time.process_time() - t
    assert text == "the end"
    assert reported < 10 * max(baseline, 1e-3), (reported, baseline)


VISIBLE = [
    ("<p>a<div hidden title='<'>secret</div>b</p>", "a\nb"),
    ('<div style="display:none"/>secret', ""),  # browsers ignore the '/': the div stays open
    ("<br/>x<img src=a.png/>y", "xy"),
    ("<p>1 &lt; 2 &amp;&amp; b</p>", "1 < 2 && b"),
    ("<script>if (a<b) {x('</div>')}</script>shown", "shown"),
    ("<textarea><b>kept</b></textarea>", "<b>kept</b>"),
    ("<!-- <p>no</p> --><p>yes</p><!--> after", "yes\nafter"),
    ("<p>cut <a href='x", "cut"),
    ("<title>T &amp; C</title><p>body", "body"),
    ("<p data-x='a>b'>q</p>", "q"),
    ("<STYLE>p{}</STYLE ><P>Up</P>", "Up"),
]


@pytest.mark.parametrize(("markup", "text"), VISIBLE)
def test_html_visible_text(markup, text):
    assert html_text(markup)[0] == text


# -- chunkers and CSV ---------------------------------------------------------------------------

def test_sentence_splitting_and_token_chunking_are_linear():
    assert growth(sentence_spans, lambda n: "!" * n, 4000) < MAX_GROWTH
    assert growth(sentence_spans, lambda n: "a" * n, 4000) < MAX_GROWTH
    chunker = TokenChunker(size=64, overlap=8)
    for make in (lambda n: "a " * (n // 2), lambda n: "a" + " " * n + "b", lambda n: "x\n\n" * (n // 3), lambda n: ". " * (n // 2)):
        assert growth(lambda t: chunker.split([Document(id="d", text=t)]), make, 4000) < MAX_GROWTH


def test_csv_loading_is_linear(tmp_path):
    work = _index_file(tmp_path, "c.csv")
    assert growth(work, lambda n: "id,text\n" + "".join(f'{i},"a ""q"" b,c"\n' for i in range(n // 14)), 2000) < MAX_GROWTH
    assert growth(work, lambda n: 'id,text\n1,"' + '""' * (n // 2) + '"\n', 4000) < MAX_GROWTH


# -- property: random documents of one size index in bounded time and memory -------------------

PIECES = ["#", " ", "\t", "\n", "x", "word", "<div>", "</b>", "<a", "</", '"', "'", "=", ">", "<!--", "-->", "&amp;", ",", "---",
          ":", "[", "]", "- ", "<script>", "</script>", "&#"]
SIZE = 20_000


def _plain(kind: str) -> str:
    row = {"md": "Some words here.\n", "html": "<p>Some words</p>\n", "csv": "1,some words here\n"}[kind]
    return ("id,text\n" if kind == "csv" else "") + row * (SIZE // len(row))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(["md", "html", "csv"]), pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=12),
       seed=st.integers(0, 2**32))
def test_random_documents_index_within_a_multiple_of_a_linear_baseline(tmp_path, kind, pieces, seed):
    rng, body = random.Random(seed), ""
    while len(body) < SIZE:
        body += "".join(rng.choice(pieces) for _ in range(256))
    text = ("id,text\n1,\"" + body.replace('"', '""') + '"\n') if kind == "csv" else body[:SIZE]
    work = _index_file(tmp_path, f"doc.{kind}")

    def attempt(t: str) -> None:
        try:
            work(t)
        except Exception as e:  # noqa: BLE001 - a refused file is fine; only its cost is measured
            assert type(e).__module__.startswith("layered"), repr(e)

    baseline = cpu_seconds(lambda: attempt(_plain(kind)), reps=2)
    hostile = cpu_seconds(lambda: attempt(text), reps=2)
    assert hostile < 20 * max(baseline, 2e-3), (kind, pieces, hostile, baseline)
    tracemalloc.start()
    try:
        attempt(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * len(text.encode()) + (4 << 20), (kind, pieces, peak)


def _write(path, text):
    path.write_text(text)
    return path
