"""Metadata filters and document-level access control.

A filter maps metadata keys to a wanted value: a plain value means equality, a list/tuple/set
means "any of these", and :class:`ContainsAny` means "the metadata value is a list sharing
at least one element with these" (used for access lists). All keys must match. Values are
compared as data, never spliced into a query string, so a hostile value cannot widen a filter.

Access control: a document may carry ``metadata["access"]``, a list of principals allowed
to see it (``"user:<id>"``, ``"group:<name>"``, or ``"*"`` for everyone). A document without
the key is public; a key whose value is not such a list (``null``, ``""``, a mapping, a nested
list, a number in it) is an error, never public (:func:`layered.types.checked_access`); an
empty list lets no user see it. :func:`access_filter` turns a :class:`User` into the filter
that stores apply *inside* their query, so ``k`` visible chunks come back whenever ``k`` exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from layered.errors import InputError
from layered.protocols import Filters
from layered.types import ACCESS_KEY, PUBLIC, Hit, checked_access

log = logging.getLogger(__name__)

__all__ = ["ACCESS_KEY", "PUBLIC", "ContainsAny", "User", "access_filter", "with_access", "normalise_access", "matches",
           "filtered_retrieve"]


@dataclass(frozen=True)
class ContainsAny:
    """Filter value: the metadata value is a list that contains any of ``values``."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class User:
    """Who is asking: an id and the groups they belong to."""

    id: str
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InputError("a user needs a non-empty string id")
        if isinstance(self.groups, str) or not all(isinstance(g, str) and g for g in self.groups):
            raise InputError("user groups must be a sequence of non-empty strings")

    def principals(self) -> tuple[str, ...]:
        return (PUBLIC, f"user:{self.id}", *(f"group:{g}" for g in self.groups))


#: The filter that keeps only public chunks (access list holding ``"*"``): what training and a
#: ``--public-only`` server see when no principal is named.
PUBLIC_ONLY: dict[str, ContainsAny] = {ACCESS_KEY: ContainsAny((PUBLIC,))}


def access_scope(user: User | None) -> dict[str, Any]:
    """The retrieval keywords (``user=`` or ``filters=``) for acting as ``user``; None: public documents only."""
    return {"user": user} if user is not None else {"filters": PUBLIC_ONLY}


def access_filter(user: User) -> dict[str, ContainsAny]:
    """The filter that keeps only chunks ``user`` may see."""
    return {ACCESS_KEY: ContainsAny(user.principals())}


def with_access(filters: Filters | None, user: User | None) -> Filters | None:
    """``filters`` narrowed to what ``user`` may see (unchanged when there is no user)."""
    if user is None:
        return filters
    if filters and ACCESS_KEY in filters:
        raise InputError(f"pass user=... instead of a filter on {ACCESS_KEY!r}")
    return {**(filters or {}), **access_filter(user)}


def normalise_access(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata with a valid access list (``["*"]`` when the document has no ``access`` key).

    A present but malformed value, ``None`` included, raises one :class:`InputError` line.
    """
    out = dict(metadata)
    out[ACCESS_KEY] = checked_access(out[ACCESS_KEY]) if ACCESS_KEY in out else [PUBLIC]
    return out


def matches(metadata: Mapping[str, Any], filters: Filters | None) -> bool:
    """Whether ``metadata`` satisfies every filter (see module docstring)."""
    if not filters:
        return True
    for key, want in filters.items():
        have = metadata.get(key)
        if isinstance(want, ContainsAny):
            if not isinstance(have, (list, tuple)) or not set(have) & set(want.values):
                return False
        elif isinstance(want, (list, tuple, set, frozenset)):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def filtered_retrieve(
    retriever: Any, query: str, *, k: int, filters: Filters | None = None, user: User | None = None, min_score: float | None = None,
) -> list[Hit]:
    """``retriever``'s top ``k`` hits for ``query`` within ``filters`` and what ``user`` may see,
    those scoring below ``min_score`` dropped. ``k=0`` (or no retriever) retrieves nothing.

    The filter goes inside the retriever's query; the hits are checked again, as defence in
    depth for user-written retrievers that ignore filters: a chunk that fails them is never
    passed on (the built-in stores already filter inside the query).
    """
    if k < 0:
        raise InputError(f"k must be 0 or more passages, got {k}")
    if retriever is None or k == 0:
        return []
    filters = with_access(filters, user)
    hits = list(retriever.retrieve(query, k=k, filters=filters))
    allowed = [h for h in hits if matches(h.chunk.metadata, filters)]
    if len(allowed) < len(hits):
        log.warning("the retriever returned %d chunks outside the filters; dropped them", len(hits) - len(allowed))
    return allowed if min_score is None else [h for h in allowed if h.score >= min_score]
