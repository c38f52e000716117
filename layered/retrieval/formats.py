"""Text extraction for HTML, Markdown and PDF files (used by the file loader).

* HTML: visible text only (no script, style, head or template content, nothing ``hidden`` or
  styled ``display:none`` / ``visibility:hidden``), ``<title>`` kept.
* Markdown: the text as is, its headings kept as metadata (``title`` and ``headings``); a
  front-matter block (``---`` lines around ``key: value`` lines, first thing in the file) is
  read by :func:`front_matter` and removed from the text.
* PDF: one document per page (``pypdf``), the 1-based page number as metadata.
"""

from __future__ import annotations

import re
from html import unescape
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


def _hides(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    if tag in _HIDDEN:
        return True
    values = {k.lower(): (v or "") for k, v in attrs}
    if "hidden" in values:
        return True
    return bool(_INVISIBLE_STYLE.search(values.get("style", "")))


# Elements whose content is raw text up to their end tag (no tags inside), as browsers parse them.
_RAW_TEXT = {"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "textarea", "title"}
_RAW_END = {tag: re.compile(rf"</{tag}[\t\n\f\r />]", re.I) for tag in _RAW_TEXT}
_TAG_NAME = re.compile(r"[^\t\n\f\r />]*")
_ATTR_NAME = re.compile(r"[^\t\n\f\r />=]+|=[^\t\n\f\r />=]*")
_SPACE = re.compile(r"[\t\n\f\r ]*")
_SPACE_SLASH = re.compile(r"[\t\n\f\r /]*")
_BARE_VALUE = re.compile(r"[^\t\n\f\r >]*")


def _tokenize(markup: str, sink: "_VisibleText") -> None:
    """Feed ``markup``'s start tags, end tags and text to ``sink``, in one forward pass.

    A small tokenizer after the WHATWG rules (comments, bogus comments, quoted attribute values,
    raw-text elements, a tag cut off by the end of the file is dropped), written so that every
    character is scanned a bounded number of times: linear in the input. The standard library's
    ``HTMLParser`` (Python 3.11) rescans the rest of the input for each ``<`` of an unfinished
    tag: 80 KB of ``<a`` took it 10 s, quadratic.
    """
    n, pos = len(markup), 0
    while pos < n:
        lt = markup.find("<", pos)
        if lt < 0:
            sink.handle_data(unescape(markup[pos:]))
            return
        if lt > pos:
            sink.handle_data(unescape(markup[pos:lt]))
        nxt = markup[lt + 1:lt + 2]
        if markup.startswith("<!--", lt):
            if markup.startswith("<!-->", lt) or markup.startswith("<!--->", lt):
                pos = lt + (5 if markup[lt + 4] == ">" else 6)
                continue
            end = markup.find("-->", lt + 4)
            pos = n if end < 0 else end + 3
        elif nxt in ("!", "?") or (nxt == "/" and not markup[lt + 2:lt + 3].isalpha() and markup[lt + 2:lt + 3] not in ("", ">")):
            end = markup.find(">", lt + 2)  # a bogus comment (or a doctype): up to the next '>'
            pos = n if end < 0 else end + 1
        elif nxt == "/" and markup[lt + 2:lt + 3] == ">":
            pos = lt + 3  # '</>' is ignored
        elif nxt == "/" and markup[lt + 2:lt + 3].isalpha() and markup[lt + 2].isascii():
            name_end = _TAG_NAME.match(markup, lt + 2).end()  # type: ignore[union-attr]
            end = _tag_end(markup, name_end, [])
            if end < 0:
                return
            sink.handle_endtag(markup[lt + 2:name_end].lower())
            pos = end
        elif nxt.isalpha() and nxt.isascii():
            name_end = _TAG_NAME.match(markup, lt + 1).end()  # type: ignore[union-attr]
            tag = markup[lt + 1:name_end].lower()
            attrs: list[tuple[str, str | None]] = []
            end = _tag_end(markup, name_end, attrs)
            if end < 0:
                return  # a tag cut off by the end of the file is dropped, as browsers do
            if markup[end - 2] == "/" and tag in _VOID:  # browsers ignore the '/' of <div/>: it opens a div
                sink.handle_startendtag(tag, attrs)
                pos = end
                continue
            sink.handle_starttag(tag, attrs)
            pos = end
            if tag in _RAW_TEXT:
                close = _RAW_END[tag].search(markup, pos)
                stop = n if close is None else close.start()
                if stop > pos:
                    text = markup[pos:stop]
                    sink.handle_data(unescape(text) if tag in ("textarea", "title") else text)
                pos = stop
        else:
            sink.handle_data("<")
            pos = lt + 1


def _tag_end(markup: str, pos: int, attrs: list[tuple[str, str | None]]) -> int:
    """Where the tag whose attributes start at ``pos`` ends (after its ``>``), its attributes
    appended to ``attrs``; -1 when the input ends first. Every step moves forward."""
    n = len(markup)
    while True:
        pos = _SPACE_SLASH.match(markup, pos).end()  # type: ignore[union-attr]
        if pos >= n:
            return -1
        if markup[pos] == ">":
            return pos + 1
        name = _ATTR_NAME.match(markup, pos)
        assert name is not None  # the character at pos is none of space, '/', '>'
        pos = _SPACE.match(markup, name.end()).end()  # type: ignore[union-attr]
        value: str | None = None
        if pos < n and markup[pos] == "=":
            pos = _SPACE.match(markup, pos + 1).end()  # type: ignore[union-attr]
            if pos < n and markup[pos] in "\"'":
                close = markup.find(markup[pos], pos + 1)
                if close < 0:
                    return -1
                value, pos = markup[pos + 1:close], close + 1
            else:
                bare = _BARE_VALUE.match(markup, pos)
                value, pos = bare.group(), bare.end()  # type: ignore[union-attr]
            value = unescape(value)
        attrs.append((name.group().lower(), value))


class _VisibleText:
    """Text a reader sees: an open-element stack marks hidden subtrees (script, style,
    ``hidden``, ``display:none``...); ``<head>`` ends where a browser ends it, even with no
    ``</head>``."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.title: list[str] = []
        self._open: list[tuple[str, bool]] = []  # (tag, hides its content)
        self._open_count: dict[str, int] = {}  # how many of each tag are on _open
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
        self._open_count[tag] = self._open_count.get(tag, 0) + 1
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
        # Close up to the matching open element; a stray end tag closes nothing and costs O(1)
        # (it used to scan the whole stack: 100k open <div> then 100k stray </b> never finished).
        # A matching one pops what it scans, so parsing stays linear overall.
        if not self._open_count.get(tag):
            return
        while self._open:
            open_tag, hides = self._open.pop()
            self._hidden -= hides
            self._open_count[open_tag] -= 1
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._hidden and not self._in_head:
            self.parts.append(data)


def html_text(markup: str) -> tuple[str, dict[str, Any]]:
    """Visible text of an HTML page (paragraphs on their own lines) and its title."""
    parser = _VisibleText()
    _tokenize(markup, parser)
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).splitlines())
    text = "\n".join(line for line in lines if line)
    title = " ".join("".join(parser.title).split())
    return text, ({"title": title} if title else {})


def markdown_metadata(text: str) -> dict[str, Any]:
    """``title`` (the first heading) and ``headings`` (all of them, in order)."""
    headings = [h for h in map(_heading, text.split("\n")) if h]
    return {"title": headings[0], "headings": headings} if headings else {}


def _heading(line: str) -> str:
    """The text of an ATX heading line (``# Title ##``), else ``""``.

    String operations only, linear in the line: the regular expression this replaces
    (``^(#{1,6})\\s+(.+?)\\s*#*\\s*$``) backtracked cubically on ``# Title`` + spaces + a letter.
    """
    level = len(line) - len(line.lstrip("#"))
    if not 1 <= level <= 6 or len(line) == level or line[level] not in " \t":
        return ""
    text = line[level:].strip()
    closed = text.rstrip("#")
    if closed != text and (not closed or closed[-1] in " \t"):
        text = closed.strip()
    return text


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


#: Front matter is at most this many characters (a block that does not close within it is text).
FRONT_MATTER_MAX = 64 << 10


class FrontMatterError(ValueError):
    """A front-matter line that sets ``access`` but cannot be read (``line`` is 1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def front_matter(text: str) -> tuple[dict[str, tuple[int, Any]], str]:
    """``({key: (line, value)}, body)`` of a Markdown file that opens with a front-matter block.

    The block is ``---`` on the first line, ``key: value`` lines (``#`` comments, blank lines),
    then ``---`` or ``...``. A value is a string (quotes removed), ``None`` for an empty value,
    ``null`` or ``~``, a list for ``[a, b]`` or for ``- item`` lines under an empty key. Text
    that does not read as such a block is not front matter and is returned whole, unless one
    of its lines sets ``access``: then :class:`FrontMatterError` (never a silently public file).
    Linear in the block (no regular expressions).
    """
    if not (text.startswith("---\n") or text.startswith("---\r\n")):
        return {}, text
    lines = text[:FRONT_MATTER_MAX].split("\n")
    if len(text) > FRONT_MATTER_MAX:
        lines.pop()  # maybe cut short
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip("\r") in ("---", "...")), None)
    if end is None:
        return _not_front_matter(lines[1:], text)
    fields: dict[str, tuple[int, Any]] = {}
    current: str | None = None
    for number, raw in enumerate(lines[1:end], start=2):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("- ") or stripped == "-":
            if current is None or not isinstance(fields[current][1], list) and fields[current][1] is not None:
                return _not_front_matter(lines[1:end], text)
            line_no, items = fields[current]
            fields[current] = (line_no, (items or []) + [_scalar(stripped[1:].strip())])
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key or line[0].isspace() or not key.replace("_", "").replace("-", "").isalnum():
            return _not_front_matter(lines[1:end], text)
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            inner = value[1:-1].strip()
            fields[key] = (number, [_scalar(v.strip()) for v in inner.split(",")] if inner else [])
        else:
            fields[key] = (number, _scalar(value))
        current = key
    return fields, text[sum(len(line) + 1 for line in lines[:end + 1]):]


def _scalar(value: str) -> Any:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return None if value in ("", "null", "Null", "NULL", "~") else value


def _not_front_matter(lines: list[str], text: str) -> tuple[dict[str, tuple[int, Any]], str]:
    _refuse_access(lines)
    return {}, text


def _refuse_access(lines: list[str]) -> None:
    for number, line in enumerate(lines, start=2):
        if line.partition(":")[0].strip().lower() == "access":
            raise FrontMatterError(number, "the front matter that sets access cannot be read; write `access: [user:ann, group:staff]` "
                                   "(or `access: ['*']` for everyone) between `---` lines at the top of the file")
