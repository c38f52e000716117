"""Metadata filters: ``{"key": value}`` or ``{"key": [any, of, these]}``, all keys must match.

Filter values are compared as data (equality / membership), never spliced into a query
string, so a hostile value cannot widen a filter.
"""

from __future__ import annotations

from typing import Any, Mapping

from layered.protocols import Filters


def matches(metadata: Mapping[str, Any], filters: Filters | None) -> bool:
    """Whether ``metadata`` satisfies every filter (a list/tuple/set value means "any of")."""
    if not filters:
        return True
    for key, want in filters.items():
        have = metadata.get(key)
        if isinstance(want, (list, tuple, set, frozenset)):
            if have not in want:
                return False
        elif have != want:
            return False
    return True
