"""gates.json: the gate results recorded beside a bundle, read by `--precision auto`.

Results are tied to the bundle digest, so they die with the weights they were measured on, and
written with a record (:mod:`codescan.engines.derived`) like every derived file. Unlike a graph,
gate results cannot be rebuilt without the labelled folder, so a gates.json that fails its
record is refused, with one line, wherever it would be consulted. Kept apart from the gate's
measurement (:mod:`codescan.engines.gate`), which builds engines: the registry reads this
file, and must not import what imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codescan.engines import derived

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle

GATES_KEY = {"contents": "gate results"}
# 2: the sample must show ≥ 99% agreement at 95% confidence. Results of rule 1 (which passed 20
# images that agreed) never pass again: re-run `codescan gate` on a large enough sample.
GATE_RULE = 2


def gates_path(bundle: Bundle) -> Path:
    return bundle.path / "gates.json"


def _results(bundle: Bundle) -> list[dict[str, Any]]:
    """The results that count: passed, for these weights, under the current rule."""
    remedy = f"re-run `codescan gate DIR --weights {bundle.name}`, or delete it to scan in fp32"
    data = derived.read_or_refuse(bundle, gates_path(bundle), GATES_KEY, remedy)
    try:
        records = json.loads(data or b"{}")
    except ValueError:
        return []
    return [
        r
        for r in records.get("results", [])
        if r.get("passed") is True and r.get("digest") == bundle.digest and r.get("rule") == GATE_RULE
    ]


def passed_gates(bundle: Bundle) -> set[tuple[str, str]]:
    return {(r["engine"], r["precision"]) for r in _results(bundle)}


def gate_note(bundle: Bundle, engine: str, precision: str) -> str | None:
    """What a scan says when `auto` took a reduced precision because of a passed gate."""
    for r in _results(bundle):
        if (r["engine"], r["precision"]) == (engine, precision):
            return f"precision {precision}: gate passed on {r.get('images')} images, {r.get('measured') or 'date not recorded'}"
    return None


def store_gates(bundle: Bundle, document: dict[str, Any]) -> Path:
    """gates.json with its record: only results codescan wrote can make `auto` pick a reduced precision."""
    path = gates_path(bundle)
    derived.write(bundle, path, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode(), GATES_KEY)
    return path
