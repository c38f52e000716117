"""JSON Lines, read one way everywhere: one JSON object per line, blank lines skipped, and
errors that name the file and line (:class:`~layered.errors.DocumentLoadError`).

Used by the document loader (streamed, within its size limits), the tuning data reader and
the BEIR query reader.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

from layered.errors import DocumentLoadError


def parse_record(line: str, where: str) -> dict[str, Any]:
    """The JSON object on ``line``; ``where`` (``file:line``) starts the error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DocumentLoadError(f"{where}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise DocumentLoadError(f"{where}: invalid JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise DocumentLoadError(f"{where}: expected a JSON object per line")
    return record


def records(lines: Iterable[str], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``lines`` (numbered from 1), read from the file ``name``."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, parse_record(line, f"{name}:{number}")
