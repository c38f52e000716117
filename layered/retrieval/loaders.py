"""Loaders: read files and folders into :class:`~layered.types.Document` objects.

``FileLoader`` reads ``.jsonl`` (also gzipped), ``.csv``, ``.txt``, ``.md``, ``.html`` and
``.pdf`` files, and folders of them (with include/exclude globs, never leaving the folder).
Document ids are stable across runs: a record's own id field when it has one, otherwise
the file's path (relative to the loaded root) plus the record's line or row number.

Hostile input is bounded (:class:`LoadLimits`): record files are streamed (JSONL line by
line, gzip decompressed as it is read, CSV by the csv module on the open file, so quoted
newlines, form feeds and U+2028 inside strings stay data); a file over ``max_file_bytes``
after decompression, or one document (a JSONL line, a CSV row, a text/HTML/Markdown file, a
PDF page) over ``max_document_bytes``, fails with one :class:`DocumentLoadError` line naming
the file and the limit; so does anything a parser refuses (deep nesting, NUL bytes, bad
encodings, malformed PDFs). A UTF-8 byte-order mark is not data (a CSV's first column keeps
its name).

Nothing is silently dropped. In a folder, a file that cannot be loaded is skipped (the rest
load) unless ``strict=True``, where the first one raises; a file given by name always raises.
Files a folder holds but the loader does not read (archives, ``.txt.gz`` and other compressed
files, FIFOs and devices, other types, links leaving the folder) and empty PDFs are skipped
too. Every skip is reported when the load ends: one warning line per reason, naming the files
(``skipped`` collects them as ``(name, reason)`` pairs for a caller that wants them).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import logging
import zlib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence, cast

from layered.errors import DocumentLoadError, SourceNotFoundError
from layered.jsonl import parse_record
from layered.errors import InputError
from layered.retrieval.formats import FrontMatterError, front_matter, html_text, markdown_metadata, pdf_pages
from layered.types import ACCESS_KEY, Document, checked_access

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
MARKUP_SUFFIXES = (".html", ".htm", ".pdf")
RECORD_SUFFIXES = (".jsonl", ".csv")
GZIP_SUFFIX = ".jsonl.gz"
SUPPORTED = frozenset(TEXT_SUFFIXES + MARKUP_SUFFIXES + RECORD_SUFFIXES + (GZIP_SUFFIX,))
ARCHIVE_SUFFIXES = frozenset((".zip", ".tar", ".tgz", ".tbz2", ".txz", ".gz", ".bz2", ".xz", ".zst", ".lz4", ".7z", ".rar"))
#: How many file names one summary line names before "and N more".
SUMMARY_NAMES = 10
ID_FIELDS = ("id", "_id", "doc_id")
TEXT_FIELDS = ("text", "content", "body")
SOURCE_FIELDS = ("url", "source_url")


@dataclass(frozen=True)
class LoadLimits:
    """What one input may cost (bytes, after decompression). Raise them for trusted, larger data.

    ``max_file_bytes``: one file (512 MiB); ``max_document_bytes``: one document, i.e. a JSONL
    line, a CSV row, a text / Markdown / HTML file or a PDF page's text (16 MiB).
    """

    max_file_bytes: int = 512 << 20
    max_document_bytes: int = 16 << 20


@dataclass(frozen=True)
class FileLoader:
    """Load documents from a file or a folder (recursively, in sorted order).

    For record files (JSONL/CSV), the text is ``text_fields`` joined by a blank line; by
    default the first of ``text``/``content``/``body`` that a record has, or its
    ``question`` and ``answer`` together. Every other scalar (or list-of-strings) field
    becomes metadata; an ``access`` list restricts who may retrieve the document: a JSON list
    in JSONL, a JSON list or ``;``/``,``-separated principals in a CSV cell, ``access: [...]``
    in Markdown front matter. A record without the field is public; a malformed one (``null``,
    ``""``, a mapping, a nested list, a number, ``[]``, an unknown principal kind) is one
    :class:`DocumentLoadError` line naming the file and line, never a public document.
    ``source_field`` names the field used as the document's source (default: ``url`` when
    present, else ``path:line``).

    ``strict``: in a folder, stop at the first file that cannot be loaded (default: skip it and
    report it). ``skipped``: a list that receives ``(name, reason)`` for each file skipped.
    """

    text_fields: Sequence[str] | None = None
    id_field: str | None = None
    source_field: str | None = None
    encoding: str = "utf-8"
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] = ()
    limits: LoadLimits = field(default_factory=LoadLimits)
    strict: bool = False
    skipped: list[tuple[str, str]] | None = field(default=None, compare=False, repr=False)

    def _walk(self, root: Path, skipped: dict[str, list[str]]) -> list[Path]:
        """Files under ``root`` matching include/exclude globs, never outside ``root``.

        Patterns match the path relative to ``root`` (``*`` crosses folders). Matching files the
        loader cannot read (a symlink pointing elsewhere, a FIFO, an archive, another type) are
        added to ``skipped`` (reason -> names), never opened.
        """
        real_root = root.resolve()
        out = []
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_dir() or not any(fnmatch(rel, p) for p in self.include) or any(fnmatch(rel, p) for p in self.exclude):
                continue
            reason = None
            if not path.is_file():
                reason = "not a regular file: a FIFO, socket, device or broken link"
            elif _suffix(path) not in SUPPORTED:
                reason = ("archive or compressed; only .jsonl.gz is read, unpack it first"
                          if path.suffix.lower() in ARCHIVE_SUFFIXES else "not a type the loader reads")
            elif not path.resolve().is_relative_to(real_root):
                reason = f"a link leaving {_printable(str(root))}"
            if reason:
                skipped.setdefault(reason, []).append(_printable(rel))
            else:
                out.append(path)
        return out

    def load(self, source: str | Path) -> Iterator[Document]:
        root = Path(source).expanduser()
        try:
            exists = root.exists()
        except (OSError, ValueError):  # a NUL byte or an over-long name
            exists = False
        if not exists:
            raise SourceNotFoundError(f"{_printable(str(source))}: no such file or folder")
        skipped: dict[str, list[str]] = {}
        folder = root.is_dir()
        if folder:
            files = self._walk(root, skipped)
            base = root
        elif not root.is_file():
            raise DocumentLoadError(f"{_printable(str(source))}: not a regular file (a FIFO, socket or device); "
                                    "copy its contents to a file first")
        else:
            files, base = [root], root.parent
        for path in files:
            rel = _printable(path.relative_to(base).as_posix())
            if _suffix(path) == ".pdf" and path.stat().st_size == 0:
                skipped.setdefault("an empty PDF, 0 bytes", []).append(rel)
            elif not folder or self.strict:
                yield from self._readable(path, rel)
            else:  # read the whole file first: a file that fails half-way is skipped, not half indexed
                try:
                    docs = list(self._readable(path, rel))
                except DocumentLoadError as e:
                    skipped.setdefault(f"could not be loaded: {_printable(str(e))}", []).append(rel)
                    continue
                yield from docs
        self._report(skipped)

    def _report(self, skipped: dict[str, list[str]]) -> None:
        """One warning line per reason, naming the files skipped for it."""
        for reason, names in skipped.items():
            if self.skipped is not None:
                self.skipped.extend((name, reason) for name in names)
            shown = ", ".join(names[:SUMMARY_NAMES]) + (f" and {len(names) - SUMMARY_NAMES} more" if len(names) > SUMMARY_NAMES else "")
            if reason.startswith("could not be loaded: "):
                log.warning("skipped %s, it %s", shown, reason)
            else:
                log.warning("skipped %d file%s (%s): %s", len(names), "" if len(names) == 1 else "s", reason, shown)

    def _readable(self, path: Path, rel: str) -> Iterator[Document]:
        """:meth:`_file`, with a file the OS will not let us read (permissions, I/O) as one error line."""
        try:
            yield from self._file(path, rel)
        except OSError as e:
            raise DocumentLoadError(f"{_printable(str(path))}: cannot read it ({e.strerror or e})") from None

    def _file(self, path: Path, rel: str) -> Iterator[Document]:
        suffix = _suffix(path)
        if suffix in (".jsonl", GZIP_SUFFIX):
            yield from self._jsonl(path, rel)
        elif suffix == ".csv":
            yield from self._csv(path, rel)
        elif suffix in (".md", ".markdown"):
            yield self._markdown(path, rel)
        elif suffix == ".txt":
            yield Document(id=rel, text=self._read(path), source=rel, metadata={"path": rel})
        elif suffix in (".html", ".htm"):
            text, meta = html_text(self._read(path))
            yield Document(id=rel, text=text, source=rel, metadata={"path": rel, **meta})
        elif suffix == ".pdf":
            self._check_size(path)
            for page, text in pdf_pages(path):
                if len(text.encode(self.encoding, "replace")) > self.limits.max_document_bytes:
                    raise DocumentLoadError(f"{_printable(str(path))}: page {page} holds over {self.limits.max_document_bytes} bytes "
                                            "of text; raise LoadLimits.max_document_bytes if that is expected")
                yield Document(id=f"{rel}#page={page}", text=text, source=rel, metadata={"path": rel, "page": page})
        else:
            kinds = ", ".join(TEXT_SUFFIXES + MARKUP_SUFFIXES + RECORD_SUFFIXES + (GZIP_SUFFIX,))
            raise DocumentLoadError(f"{_printable(str(path))}: unsupported file type {suffix!r}; use one of {kinds}")

    def _markdown(self, path: Path, rel: str) -> Document:
        """A Markdown file; its front matter (removed from the text) gives metadata, ``access`` included."""
        name = _printable(str(path))
        try:
            fields, text = front_matter(self._read(path))
        except FrontMatterError as e:
            raise DocumentLoadError(f"{name}:{e.line}: {e}") from None
        meta: dict[str, Any] = {}
        for key, (line, value) in fields.items():
            if key == ACCESS_KEY:
                try:
                    meta[key] = checked_access(value)
                except InputError as e:
                    raise DocumentLoadError(f"{name}:{line}: {e}") from None
            elif key != "path" and _is_metadata(value):
                meta[key] = value
        return Document(id=rel, text=text, source=rel, metadata={"path": rel, **markdown_metadata(text), **meta})

    def _check_size(self, path: Path, limit: int | None = None) -> None:
        limit = self.limits.max_file_bytes if limit is None else limit
        size = path.stat().st_size
        if size > limit:
            raise DocumentLoadError(f"{_printable(str(path))}: {size} bytes is over the {limit}-byte limit; "
                                    "split the file or raise the loader's LoadLimits")

    def _read(self, path: Path) -> str:
        """A whole text/Markdown/HTML file: one document, so ``max_document_bytes`` bounds it."""
        self._check_size(path, min(self.limits.max_document_bytes, self.limits.max_file_bytes))
        data = path.read_bytes()
        if b"\x00" in data and not self.encoding.lower().replace("-", "").startswith("utf16"):
            raise DocumentLoadError(f"{_printable(str(path))}: contains NUL bytes, so it is not {self.encoding} text "
                                    "(a binary file? UTF-16? pass encoding=...)")
        return self._decode(data, path)

    def _decode(self, data: bytes, path: Path, where: str = "") -> str:
        """``data`` as text; a UTF-8 byte-order mark at the start of a file is not text."""
        if where in ("", ":1") and _is_utf8(self.encoding) and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        try:
            return data.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise DocumentLoadError(
                f"{_printable(str(path))}{where}: not valid {self.encoding} (byte {e.start}); convert it, e.g. `iconv -f latin1 -t utf-8`"
            ) from None

    def _open(self, path: Path) -> IO[bytes]:
        return cast(IO[bytes], gzip.open(path, "rb")) if _suffix(path) == GZIP_SUFFIX else open(path, "rb")

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        """``(number, line)`` of a (possibly gzipped) file, read as a stream within the limits.

        Lines end at ``\\n`` only: U+2028 and form feeds inside a JSON string are data.
        """
        per_line, per_file = self.limits.max_document_bytes, self.limits.max_file_bytes
        name, total, number = _printable(str(path)), 0, 0
        with self._open(path) as f:
            while True:
                try:
                    line = f.readline(per_line + 1)
                except (OSError, EOFError, zlib.error) as e:
                    raise DocumentLoadError(f"{name}: not a readable gzip file ({e})") from None
                if not line:
                    return
                number += 1
                total += len(line)
                if total > per_file:
                    raise DocumentLoadError(f"{name}: over the {per_file}-byte limit after decompression; split the file "
                                            "or raise the loader's LoadLimits.max_file_bytes")
                if len(line) > per_line:
                    raise DocumentLoadError(f"{name}:{number}: a line over the {per_line}-byte limit; split the record or "
                                            "raise the loader's LoadLimits.max_document_bytes")
                yield number, line

    def _jsonl(self, path: Path, rel: str) -> Iterator[Document]:
        name = _printable(str(path))
        for lineno, raw in self._lines(path):
            line = self._decode(raw, path, f":{lineno}")
            if line.strip():
                yield self._record(parse_record(line, f"{name}:{lineno}"), f"{name}:{lineno}", f"{rel}:{lineno}")

    def _csv(self, path: Path, rel: str) -> Iterator[Document]:
        name, limit = _printable(str(path)), self.limits.max_document_bytes
        self._check_size(path)
        # The csv module's field limit is process-wide; only ever raise it, to this loader's bound.
        csv.field_size_limit(max(csv.field_size_limit(), limit))
        # utf-8-sig: a byte-order mark (Excel writes one) would otherwise rename the first column "\ufeffid".
        encoding = "utf-8-sig" if _is_utf8(self.encoding) else self.encoding
        with open(path, newline="", encoding=encoding) as f:
            reader = csv.reader(f)
            rowno = 1
            try:
                header = next(reader, None)
                if not header:
                    return
                self._refuse_nul(header, name, rowno)
                for rowno, row in enumerate(reader, start=2):
                    if not row:
                        continue
                    self._refuse_nul(row, name, rowno)
                    if len(row) > len(header):
                        raise DocumentLoadError(f"{name}:{rowno}: {len(row)} fields but the header names {len(header)}; "
                                                "quote fields that contain commas")
                    if sum(len(v) for v in row) > limit:
                        raise DocumentLoadError(f"{name}:{rowno}: a row over the {limit}-character limit")
                    record = dict(zip(header, row + [""] * (len(header) - len(row))))
                    yield self._record(record, f"{name}:{rowno}", f"{rel}:{rowno}", csv_row=True)
            except csv.Error as e:
                raise DocumentLoadError(f"{name}:{rowno}: malformed CSV ({e})") from None
            except UnicodeDecodeError as e:
                raise DocumentLoadError(f"{name}: not valid {self.encoding} near row {rowno} (byte {e.start}); "
                                        "convert it, e.g. `iconv -f latin1 -t utf-8`") from None

    def _refuse_nul(self, row: Sequence[str], name: str, rowno: int) -> None:
        """A CSV row holding NUL is refused, as a .txt file holding one is: it is not text."""
        if any("\x00" in v for v in row):
            raise DocumentLoadError(f"{name}:{rowno}: contains NUL bytes, so it is not {self.encoding} text "
                                    "(a binary file? UTF-16? pass encoding=...)")

    def _record(self, record: Mapping[str, Any], where: str, fallback_id: str, *, csv_row: bool = False) -> Document:
        fields = self._text_fields(record, where)
        missing = [f for f in fields if f not in record]
        if missing:
            raise DocumentLoadError(f"{where}: no field {missing[0]!r} (fields: {_field_list(record)})")
        text = "\n\n".join(str(record[f]).strip() for f in fields if record[f] not in (None, ""))
        id_field = self.id_field or next((f for f in ID_FIELDS if f in record), None)
        doc_id = str(record[id_field]) if id_field and record.get(id_field) not in (None, "") else fallback_id
        source_field = self.source_field or next((f for f in SOURCE_FIELDS if record.get(f)), None)
        source = str(record[source_field]) if source_field and record.get(source_field) else fallback_id
        metadata = {k: v for k, v in record.items() if k not in fields and k != ACCESS_KEY and _is_metadata(v)}
        if ACCESS_KEY in record:
            # Validated, never dropped: a malformed list left out would make the document public.
            try:
                metadata[ACCESS_KEY] = checked_access(_csv_access(record[ACCESS_KEY], where) if csv_row else record[ACCESS_KEY])
            except InputError as e:
                raise DocumentLoadError(f"{where}: {e}") from None
        return Document(id=doc_id, text=text, source=source, metadata=metadata)

    def _text_fields(self, record: Mapping[str, Any], where: str) -> Sequence[str]:
        if self.text_fields:
            return self.text_fields
        for f in TEXT_FIELDS:
            if f in record:
                return (f,)
        if "question" in record and "answer" in record:
            return ("question", "answer")
        raise DocumentLoadError(
            f"{where}: cannot tell which field holds the text (fields: {_field_list(record)}); pass text_fields=[...]"
        )


def _csv_access(cell: Any, where: str) -> Any:
    """A CSV ``access`` cell as a list: a JSON array (``["user:ann","group:staff"]``) or principals
    separated by ``;`` or ``,`` (``user:ann; group:staff``). An empty cell is an error (``*``: everyone)."""
    import json

    text = str(cell).strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise DocumentLoadError(f"{where}: the access cell {text[:60]!r} is not a JSON list") from None
    return [p.strip() for p in text.replace(";", ",").split(",")]


def _field_list(record: Mapping[str, Any]) -> str:
    """A record's field names for a one-line message: quoted, shortened, at most 20."""
    names = [repr(str(k))[:40] for k in list(record)[:20]]
    return ", ".join(names) + (", ..." if len(record) > 20 else "")


def _printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (file names come from the OS as surrogates) shown as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")


def _suffix(path: Path) -> str:
    return GZIP_SUFFIX if path.name.lower().endswith(GZIP_SUFFIX) else path.suffix.lower()


def _is_metadata(value: Any) -> bool:
    # Scalars, and lists of strings (e.g. an access list of principals).
    if isinstance(value, (str, int, float, bool)):
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def load_documents(source: str | Path, **options: Any) -> list[Document]:
    """Load every document of ``source`` with a :class:`FileLoader` built from ``options``."""
    return list(FileLoader(**options).load(source))
