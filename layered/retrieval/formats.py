"""Text extraction for HTML, Markdown and PDF files (used by the file loader).

* HTML: visible text only (no script, style, head or template content), ``<title>`` kept.
* Markdown: the text as is, its headings kept as metadata (``title`` and ``headings``).
* PDF: one document per page (``pypdf``), the 1-based page number as metadata.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

from layered.errors import DocumentLoadError

_HIDDEN = {"script", "style", "head", "template", "noscript", "svg"}
_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre", "table", "ul", "ol"}
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        if tag == "title":
            self._in_title = True
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN and self._hidden:
            self._hidden -= 1
        if tag == "title":
            self._in_title = False
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._hidden:
            self.parts.append(data)


def html_text(markup: str) -> tuple[str, dict[str, Any]]:
    """Visible text of an HTML page (paragraphs on their own lines) and its title."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in lines if line)
    title = " ".join("".join(parser.title).split())
    return text, ({"title": title} if title else {})


def markdown_metadata(text: str) -> dict[str, Any]:
    """``title`` (the first heading) and ``headings`` (all of them, in order)."""
    headings = [m.group(2) for m in _HEADING.finditer(text)]
    return {"title": headings[0], "headings": headings} if headings else {}


def pdf_pages(path: Path) -> Iterator[tuple[int, str]]:
    """``(page number, text)`` for each page of a PDF."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as e:  # pragma: no cover - pypdf is a dependency
        raise DocumentLoadError("reading PDF needs pypdf: `pip install pypdf`") from e
    try:
        reader = PdfReader(str(path))
        for number, page in enumerate(reader.pages, start=1):
            yield number, page.extract_text() or ""
    except (PdfReadError, ValueError, KeyError, OSError) as e:
        raise DocumentLoadError(f"{path}: not a readable PDF ({e})") from None
