"""JSON as the standard defines it: Python's json accepts NaN, Infinity and -Infinity, which are not
JSON and which codescan never writes, so every file codescan reads back refuses them."""

from __future__ import annotations

import json
from typing import Any


def _refuse(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def loads(text: str | bytes, **options: Any) -> Any:
    """json.loads with NaN and ±Infinity refused (ValueError); `options` go to json.loads."""
    return json.loads(text, parse_constant=_refuse, **options)
