"""Loaders: read files and folders into :class:`~layered.types.Document` objects.

``FileLoader`` reads ``.jsonl`` (also gzipped), ``.csv``, ``.txt``, ``.md``, ``.html`` and
``.pdf`` files, and folders of them (with include/exclude globs, never leaving the folder).
Document ids are stable across runs: a record's own id field when it has one, otherwise
the file's path (relative to the loaded root) plus the record's line or row number.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from layered.errors import DocumentLoadError, SourceNotFoundError
from layered.retrieval.formats import html_text, markdown_metadata, pdf_pages
from layered.types import Document

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
MARKUP_SUFFIXES = (".html", ".htm", ".pdf")
RECORD_SUFFIXES = (".jsonl", ".csv")
GZIP_SUFFIX = ".jsonl.gz"
SUPPORTED = frozenset(TEXT_SUFFIXES + MARKUP_SUFFIXES + RECORD_SUFFIXES + (GZIP_SUFFIX,))
ID_FIELDS = ("id", "_id", "doc_id")
TEXT_FIELDS = ("text", "content", "body")
SOURCE_FIELDS = ("url", "source_url")


@dataclass(frozen=True)
class FileLoader:
    """Load documents from a file or a folder (recursively, in sorted order).

    For record files (JSONL/CSV), the text is ``text_fields`` joined by a blank line; by
    default the first of ``text``/``content``/``body`` that a record has, or its
    ``question`` and ``answer`` together. Every other scalar (or list-of-strings) field
    becomes metadata; an ``access`` list restricts who may retrieve the document.
    ``source_field`` names the field used as the document's source (default: ``url`` when
    present, else ``path:line``).
    """

    text_fields: Sequence[str] | None = None
    id_field: str | None = None
    source_field: str | None = None
    encoding: str = "utf-8"
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] = ()

    def _walk(self, root: Path) -> list[Path]:
        """Files under ``root`` matching include/exclude globs, never outside ``root``.

        Patterns match the path relative to ``root`` (``*`` crosses folders). A file whose
        real path leaves ``root`` (a symlink pointing elsewhere) is skipped with a warning.
        """
        real_root = root.resolve()
        out = []
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or _suffix(path) not in SUPPORTED:
                continue
            if not any(fnmatch(rel, p) for p in self.include) or any(fnmatch(rel, p) for p in self.exclude):
                continue
            if not path.resolve().is_relative_to(real_root):
                log.warning("skipping %s: it points outside %s", rel, root)
                continue
            out.append(path)
        return out

    def load(self, source: str | Path) -> Iterator[Document]:
        root = Path(source).expanduser()
        if not root.exists():
            raise SourceNotFoundError(f"{source}: no such file or folder")
        if root.is_dir():
            files = self._walk(root)
            base = root
        else:
            files, base = [root], root.parent
        for path in files:
            rel = path.relative_to(base).as_posix()
            suffix = _suffix(path)
            if suffix in (".jsonl", GZIP_SUFFIX):
                yield from self._jsonl(path, rel)
            elif suffix == ".csv":
                yield from self._csv(path, rel)
            elif suffix in (".md", ".markdown"):
                text = self._read(path)
                yield Document(id=rel, text=text, source=rel, metadata={"path": rel, **markdown_metadata(text)})
            elif suffix == ".txt":
                yield Document(id=rel, text=self._read(path), source=rel, metadata={"path": rel})
            elif suffix in (".html", ".htm"):
                text, meta = html_text(self._read(path))
                yield Document(id=rel, text=text, source=rel, metadata={"path": rel, **meta})
            elif suffix == ".pdf":
                for page, text in pdf_pages(path):
                    yield Document(id=f"{rel}#page={page}", text=text, source=rel, metadata={"path": rel, "page": page})
            else:
                kinds = ", ".join(TEXT_SUFFIXES + MARKUP_SUFFIXES + RECORD_SUFFIXES + (GZIP_SUFFIX,))
                raise DocumentLoadError(f"{path}: unsupported file type {suffix!r}; use one of {kinds}")

    def _read(self, path: Path) -> str:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            import gzip

            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as e:
                raise DocumentLoadError(f"{path}: not a readable gzip file ({e})") from None
        try:
            return data.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise DocumentLoadError(
                f"{path}: not valid {self.encoding} (byte {e.start}); convert it, e.g. `iconv -f latin1 -t utf-8`"
            ) from None

    def _jsonl(self, path: Path, rel: str) -> Iterator[Document]:
        for lineno, line in enumerate(self._read(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DocumentLoadError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DocumentLoadError(f"{path}:{lineno}: expected a JSON object per line")
            yield self._record(record, f"{path}:{lineno}", f"{rel}:{lineno}")

    def _csv(self, path: Path, rel: str) -> Iterator[Document]:
        reader = csv.DictReader(self._read(path).splitlines())
        for rowno, record in enumerate(reader, start=2):
            yield self._record(record, f"{path}:{rowno}", f"{rel}:{rowno}")

    def _record(self, record: Mapping[str, Any], where: str, fallback_id: str) -> Document:
        fields = self._text_fields(record, where)
        missing = [f for f in fields if f not in record]
        if missing:
            raise DocumentLoadError(f"{where}: no field {missing[0]!r} (fields: {', '.join(record)})")
        text = "\n\n".join(str(record[f]).strip() for f in fields if record[f] not in (None, ""))
        id_field = self.id_field or next((f for f in ID_FIELDS if f in record), None)
        doc_id = str(record[id_field]) if id_field and record.get(id_field) not in (None, "") else fallback_id
        source_field = self.source_field or next((f for f in SOURCE_FIELDS if record.get(f)), None)
        source = str(record[source_field]) if source_field and record.get(source_field) else fallback_id
        metadata = {k: v for k, v in record.items() if k not in fields and _is_metadata(v)}
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
            f"{where}: cannot tell which field holds the text (fields: {', '.join(record)}); pass text_fields=[...]"
        )


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
