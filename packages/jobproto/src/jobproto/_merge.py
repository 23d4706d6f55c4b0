"""``concat_data``: the merge function for streamed output (see ``Job.emit``'s ``merge``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAX_MERGED_CHARS", "MAX_MERGED_ITEMS", "Merge", "concat_data"]

#: ``merge(earlier_payload, later_payload)``: the payload of one data event saying both, or None
#: when they should stay two events
Merge = Callable[[Any, Any], Any]

#: the longest list and string a merged payload may hold (bounds on an event's size and on the
#: cost of merging into it)
MAX_MERGED_ITEMS = 256
MAX_MERGED_CHARS = 8192


def concat_data(earlier: Any, later: Any) -> Any:
    """Join two payloads that are objects with the same keys, each a string or a list.

    ``{"text": "Hel", "ids": [1]}`` and ``{"text": "lo", "ids": [2]}`` make
    ``{"text": "Hello", "ids": [1, 2]}``: what a consumer that concatenates events gets either
    way. Anything else (other keys or value types, a list or string past its bound) is None: the
    two stay separate events.
    """
    if not (isinstance(earlier, dict) and isinstance(later, dict)):
        return None
    if earlier.keys() != later.keys():
        return None
    merged: dict[str, Any] = {}
    for key, a in earlier.items():
        b = later[key]
        if isinstance(a, str) and isinstance(b, str):
            limit = MAX_MERGED_CHARS
        elif isinstance(a, list) and isinstance(b, list):
            limit = MAX_MERGED_ITEMS
        else:
            return None
        if len(a) + len(b) > limit:
            return None
        merged[key] = a + b
    return merged
