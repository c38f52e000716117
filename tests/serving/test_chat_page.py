"""The chat page in a real headless browser: Debian's chromium, driven by playwright, against a
real `PipelineServer` (MiniLM embeddings, SmolLM2 on llama.cpp) on loopback.

The browser comes from the system (``apt-get install chromium``), not playwright's download.
Without it these tests skip, except under ``CI=true``, where a missing browser fails them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from layered import Pipeline
from layered.types import Document

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("LAYERED_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SECRET_MARKS = ("staff-memo", "ZX-41", "zx41-trial")

DOCS = [
    Document(id="glaucoma", source="medquad/glaucoma.txt", text=(
        "What is glaucoma? Glaucoma is a group of diseases that damage the eye's optic nerve and can lead to vision loss "
        "and blindness. It is often linked to high pressure inside the eye. How is glaucoma treated? Glaucoma is treated "
        "with prescription eye drops that lower the pressure in the eye, with laser surgery that helps fluid drain from "
        "the eye, or with conventional surgery that makes a new opening for the fluid to leave the eye. Treatment cannot "
        "restore lost vision, but it can slow or prevent further loss.")),
    Document(id="shingles", source="medquad/shingles.txt", text=(
        "What is shingles? Shingles is a painful skin rash caused by the varicella zoster virus, the same virus that causes "
        "chickenpox. The rash usually appears as a band of blisters on one side of the body. Antiviral medicines such as "
        "acyclovir shorten the attack, and a vaccine lowers the chance of getting shingles.")),
    # Only the staff group may retrieve this one.
    Document(id="staff-memo", source="memos/zx41-trial.txt", metadata={"access": ["group:staff"]}, text=(
        "Staff memo on glaucoma treatment: the ZX-41 eye drop trial for glaucoma enrolls patients on Tuesdays in ward 7. "
        "Glaucoma patients in the trial use ZX-41 drops twice a day.")),
]


def _playwright_or_skip():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason, sync_playwright = "playwright is not installed (pip install -e '.[dev]')", None
    if reason is None and not Path(CHROMIUM).is_file():
        reason = f"no chromium at {CHROMIUM}: apt-get install -y chromium (or set LAYERED_CHROMIUM)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the browser tests cannot run: {reason}")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(browser):
    """A real pipeline behind a real server that names its user in ``X-User`` / ``X-Groups``."""
    from layered.generation.llamacpp_generator import LlamaCppGenerator
    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.dense import DenseRetriever
    from layered.retrieval.embedders import SentenceTransformerEmbedder
    from layered.serving.server import PipelineServer, ServeOptions
    from layered.pipelines.medical import MEDICAL_PROMPT, MIN_SCORE

    embedder = SentenceTransformerEmbedder()
    retriever = DenseRetriever(embedder=embedder, chunker=TokenChunker(size=200, overlap=0, tokenizer=embedder.tokenizer()))
    retriever.add_documents(DOCS)
    pipe = Pipeline(generator=LlamaCppGenerator(max_new_tokens=60), retriever=retriever, prompt=MEDICAL_PROMPT, k=3,
                    min_score=MIN_SCORE).warm_up()
    srv = PipelineServer(pipe, ("127.0.0.1", 0), ServeOptions(model_name="medical", user_header="X-User", groups_header="X-Groups"))
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class Page:
    """One browser tab on the chat page, recording console errors, requests and chat bodies."""

    def __init__(self, browser, site, user: str, groups: str = "") -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 800})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.chat_bodies: list[dict] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)
        self.page.goto(site.url + "/")
        self.page.wait_for_selector("body[data-ready=true]")
        self.page.fill("#user", user)
        self.page.fill("#groups", groups)

    def _request(self, request) -> None:
        self.urls.append(request.url)
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            self.chat_bodies.append(json.loads(request.post_data))

    def ask(self, question: str) -> list[str]:
        """Send ``question``; returns the answer's text as the DOM showed it while it streamed."""
        page = self.page
        before = page.locator("#conversation > li.assistant").count()
        page.evaluate("""() => {
            window.__snapshots = [];
            new MutationObserver(() => {
                const last = document.querySelector('#conversation > li.assistant:last-child');
                if (last && last.classList.contains('streaming')) window.__snapshots.push(last.querySelector('.answer').textContent);
            }).observe(document.getElementById('conversation'), {childList: true, subtree: true, characterData: true});
        }""")
        page.fill("#question", question)
        page.click("#send")
        page.wait_for_function(  # a function, not an expression: the page's CSP forbids eval
            """(before) => document.querySelectorAll('#conversation > li.assistant').length > before
                && !document.querySelector('#conversation > li.assistant:last-child').classList.contains('streaming')""",
            arg=before, timeout=240_000)
        return page.evaluate("window.__snapshots")

    def last_answer(self):
        return self.page.locator("#conversation > li.assistant").last

    def close(self) -> None:
        self.context.close()


def _shot(page: Page, folder: Path, name: str) -> Path:
    path = folder / name
    page.page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 1000
    return path


def _loopback_only(page: Page, site) -> None:
    origin = urlsplit(site.url).netloc
    outside = [u for u in page.urls if not u.startswith("data:") and urlsplit(u).netloc != origin]
    assert not outside, f"the page asked another origin: {outside}"


def test_the_page_streams_cited_answers_keeps_the_history_and_hides_what_the_user_may_not_see(browser, site, tmp_path):
    tab = Page(browser, site, user="ann")
    page = tab.page
    try:
        assert page.title() == "layered chat"
        assert page.locator("#model option").all_inner_texts() == ["medical (default)"]
        assert page.locator("#audience option").all_inner_texts() == ["patient", "clinician"]
        assert page.input_value("#audience") == "patient"

        snapshots = tab.ask("How is glaucoma treated?")
        answer = tab.last_answer()
        text = answer.locator(".answer").inner_text()
        assert "glaucoma" in text.lower() or "eye" in text.lower()
        seen = [s for s in dict.fromkeys(snapshots) if s.strip()]
        assert len(seen) >= 2, f"the answer did not stream (DOM states seen: {seen})"
        assert all(text.startswith(s.rstrip()[:20]) for s in seen)  # partial states led up to the answer

        # A citation opens the passage and its source.
        links = answer.locator("a.cite")
        assert links.count() >= 1
        links.first.click()
        panel = page.locator("#passage")
        panel.wait_for(state="visible")
        assert page.inner_text("#passage-doc") == "glaucoma" and page.inner_text("#passage-source") == "medquad/glaucoma.txt"
        assert "prescription eye drops" in page.inner_text("#passage-text")
        _shot(tab, tmp_path, "answer.png")

        # The follow-up goes out with the whole conversation.
        follow = "Which eye drops did you mean, and what do they lower?"
        tab.ask(follow)
        first, second = tab.chat_bodies
        assert first["stream"] is True and first["model"] == "medical"
        assert first["layered"] == {"variables": {"audience": "patient"}}
        assert first["messages"] == [{"role": "user", "content": "How is glaucoma treated?"}]
        assert second["messages"] == [{"role": "user", "content": "How is glaucoma treated?"},
                                      {"role": "assistant", "content": text},
                                      {"role": "user", "content": follow}]
        reply = tab.last_answer()
        assert "refused" not in (reply.get_attribute("class") or "")
        assert reply.locator("li.source").count() >= 1 and "glaucoma" in reply.locator(".sources").text_content()
        assert any(w in reply.locator(".answer").inner_text().lower() for w in ("drop", "pressure", "eye", "glaucoma"))

        # ann may not see the staff memo: it is nowhere in what the page holds.
        html = page.content()
        assert not [m for m in SECRET_MARKS if m in html]
        assert not tab.errors, tab.errors
        _loopback_only(tab, site)
        _shot(tab, tmp_path, "follow-up.png")
        shots = os.environ.get("LAYERED_SCREENSHOTS")  # to refresh docs/chat-page.png
        if shots:
            page.screenshot(path=shots)

        page.click("#new")
        assert page.locator("#conversation > li").count() == 0
    finally:
        tab.close()


def test_a_user_with_access_sees_the_staff_document_and_off_topic_questions_are_refused_visibly(browser, site, tmp_path):
    tab = Page(browser, site, user="bob", groups="nurses, staff")
    page = tab.page
    try:
        tab.ask("How is glaucoma treated?")
        tab.last_answer().locator(".sources-box summary").click()  # the list of every passage shown to the model
        sources = tab.last_answer().locator(".sources")
        assert "staff-memo" in sources.inner_text(), sources.inner_text()
        link = tab.last_answer().locator("li.source", has_text="staff-memo").locator("a.cite")
        link.click()
        assert page.inner_text("#passage-source") == "memos/zx41-trial.txt" and "ZX-41" in page.inner_text("#passage-text")

        tab.ask("What is the capital of France?")
        refused = tab.last_answer()
        assert "refused" in refused.get_attribute("class") and refused.locator(".badge.refusal").is_visible()
        assert not tab.errors, tab.errors
        _loopback_only(tab, site)
        _shot(tab, tmp_path, "refused.png")
    finally:
        tab.close()


def test_unsupported_sentences_and_inline_citations_are_marked(browser, site, tmp_path):
    """The page's rendering of a final chunk, on a stream the browser is handed (no model needed)."""
    tab = Page(browser, site, user="ann")
    page = tab.page
    source = {"number": 1, "chunk_id": "c1", "doc_id": "doc-a", "source": "a.txt", "score": 0.9, "text": "Passage <b>one</b> text."}
    final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
             "layered": {"citations": [source], "sources": [source],
                         "metadata": {"grounding": {"mode": "mark", "unsupported": ["The moon is cheese."]}}}}
    pieces = ["Rest helps [1]. ", "<img src=x onerror=alert(1)> The moon is cheese."]
    body = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]})}\n\n" for p in pieces)
    body += f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    try:
        tab.ask("Anything?")
        answer = tab.last_answer()
        assert answer.locator("mark.unsupported").inner_text() == "The moon is cheese."
        assert answer.locator(".note").is_visible()
        assert answer.locator("img").count() == 0  # text stays text
        answer.locator(".answer a.cite").click()
        assert page.inner_text("#passage-text") == "Passage <b>one</b> text."
        assert not tab.errors, tab.errors
        _shot(tab, tmp_path, "marks.png")
    finally:
        tab.close()
