"""Text extraction for HTML, Markdown and PDF files (used by the file loader).

* HTML: visible text only (no script, style, head or template content, nothing ``hidden`` or
  styled ``display:none`` / ``visibility:hidden``), ``<title>`` kept.
* Markdown: the text as is, its headings kept as metadata (``title`` and ``headings``).
* PDF: one document per page (``pypdf``), the 1-based page number as metadata.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

from layered.errors import DocumentLoadError

_HIDDEN = {"script", "style", "template", "noscript", "svg", "iframe", "object"}
_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre", "table", "ul", "ol"}
# Elements with no end tag: they never enclose text, so they never go on the open-element stack.
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
# What may appear inside <head>; any other start tag (or <body>) ends the head, as browsers do.
_HEAD_CONTENT = {"title", "meta", "link", "style", "script", "base", "noscript", "template"}
_INVISIBLE_STYLE = re.compile(r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?:px|pt|em|rem|%)?\s*(?:;|$))", re.I)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _hides(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    if tag in _HIDDEN:
        return True
    values = {k.lower(): (v or "") for k, v in attrs}
    if "hidden" in values:
        return True
    return bool(_INVISIBLE_STYLE.search(values.get("style", "")))


class _VisibleText(HTMLParser):
    """Text a reader sees: an open-element stack marks hidden subtrees (script, style,
    ``hidden``, ``display:none``...); ``<head>`` ends where a browser ends it, even with no
    ``</head>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._open: list[tuple[str, bool]] = []  # (tag, hides its content)
        self._hidden = 0
        self._in_head = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "head":
            self._in_head = True
            return
        if self._in_head and (tag not in _HEAD_CONTENT):
            self._in_head = False
        if tag == "title":
            self._in_title = True
        if tag in _BLOCK:
            self.parts.append("\n")
        if tag in _VOID:
            return
        hides = _hides(tag, attrs)
        self._open.append((tag, hides))
        self._hidden += hides

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in _BLOCK:
            self.parts.append("\n")
        if self._in_head and tag not in _HEAD_CONTENT:
            self._in_head = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
            return
        if tag == "title":
            self._in_title = False
        if tag in _BLOCK:
            self.parts.append("\n")
        # Close up to the matching open element (stray end tags close nothing).
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                for _, hides in self._open[i:]:
                    self._hidden -= hides
                del self._open[i:]
                break

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._hidden and not self._in_head:
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
        raise DocumentLoadError(f"{path}: not a readable PDF ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - pypdf on hostile input raises anything (limits, recursion, type errors)
        raise DocumentLoadError(f"{path}: not a readable PDF ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
