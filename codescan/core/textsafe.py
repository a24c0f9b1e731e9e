"""Make text that came from files safe to show: on a terminal, in a log, in a spreadsheet.

File names, metadata and pickle contents are written by whoever made the file. Raw C0/C1
control characters in them can retitle or clear a terminal and fake messages; bidi controls
reorder what a reader sees; a CSV cell starting with ``=`` is run as a formula by spreadsheet
programs. Every place that shows such text passes it through one of these functions.
"""

from __future__ import annotations

import re

# C0 (except none), DEL, C1, and the Unicode bidi/format controls that reorder displayed text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int | None = None) -> str:
    """`text` with every control and bidi character written as a visible escape (``\\x1b``).

    ``limit`` cuts the result (marking the cut with an ellipsis) so that a hostile name of a
    megabyte cannot flood a terminal either.
    """
    out = _UNSAFE.sub(_escape, text)
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 1)] + "…"
    return out


def strip_controls(text: str) -> str:
    """`text` without control and bidi characters (for quoted metadata, where escapes add noise)."""
    return _UNSAFE.sub("", text)


def csv_cell(text: str) -> str:
    """OWASP's CSV-injection rule: a text cell that a spreadsheet would evaluate gets a leading ``'``.

    Applied to text columns only (numbers stay numbers, negative scores included); the JSONL
    record keeps the original.
    """
    return "'" + text if text.startswith(_FORMULA_START) else text
