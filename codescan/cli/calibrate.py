"""`codescan calibrate`: thresholds for a target false-positive rate on your own photos, installed as a variant.

A threshold of 0 on a decision function says nothing about how many genuine photos *like
yours* get flagged; a moderator needs "at most 1% of our photos". So calibrate scores the
user's labelled images exactly as eval (and so scan) does, picks each head's threshold on the
reals (:mod:`codescan.train.calibrate` holds the rule and the statistics), and installs the
thresholds as a bundle variant that shares the parent's files and pins its digest.

Tables and warnings go to stderr; stdout holds one JSON document::

    {schema_version, codescan, data, data_sha256, weights: {name, sha256, revision},
     engine, device, precision, crops, target_fpr,
     variant: {name, parent, parent_digest},
     counts: {files, scored, real, fake, undecodable},
     heads: {<head>: {threshold, previous_threshold, target_fpr, fpr: R, tpr: R | null,
                      n_real, n_fake, ties_at_threshold, warnings: [str]}},
     bias: str,
     undecodable: [{path, label, generator, error_code, error}]}
    R = {rate, ci95: [low, high], count, n}   (exact Clopper–Pearson 95% interval for the true rate)

``tpr`` is null when the data hold no fakes (an FPR-only operating point). ``data_sha256``
fingerprints the scored images by content and label, so a later reader can tell whether the
same photos chose the thresholds, wherever they now lie.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from codescan.cli.options import (
    BatchSizeOpt,
    Command,
    CropsOpt,
    EngineOpt,
    PrecisionOpt,
    QuietOpt,
    UsageError,
    WeightsOpt,
    err_console,
)
from codescan.core import defaults
from codescan.core.records import HeadChoice
from codescan.core.version import __version__
from codescan.output import messages

CALIBRATE_SCHEMA_VERSION = 1


def _data_sha256(paths_and_labels: list[tuple[Path, str]]) -> str:
    """sha256 over the sorted (label, file sha256) pairs: names and places do not matter, contents do."""
    from codescan.weights.store import sha256_file

    lines = sorted(f"{label}\t{sha256_file(path)}\n" for path, label in paths_and_labels)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _render(doc: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from codescan.core.textsafe import printable
    from codescan.train.commands import print_uncut

    counts = doc["counts"]
    err = err_console()
    err.print(
        Text(printable(
            f"{doc['weights']['name']} on {doc['data']}: {counts['real']} real, {counts['fake']} fake scored, "
            f"{doc['engine']} {doc['precision']}; threshold = smallest with FPR <= {doc['target_fpr']:g} on the reals"
        ))
    )
    table = Table(box=box.SIMPLE_HEAD, title="fake when score > threshold; 95% Clopper-Pearson intervals", title_justify="left")
    for i, col in enumerate(("head", "threshold", "was", "FPR", "FPR 95% CI", "TPR", "TPR 95% CI", "n real", "n fake")):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)

    def rate(r: dict[str, Any] | None) -> tuple[str, str]:
        if r is None:
            return "—", "—"
        return f"{r['rate']:.4f} ({r['count']}/{r['n']})", f"{r['ci95'][0]:.4f}–{r['ci95'][1]:.4f}"

    for name, h in doc["heads"].items():
        table.add_row(name, f"{h['threshold']:.6g}", f"{h['previous_threshold']:g}", *rate(h["fpr"]), *rate(h["tpr"]),
                      str(h["n_real"]), str(h["n_fake"]))
    print_uncut(err, table)
    heads_by_warning: dict[str, list[str]] = {}  # too few reals is said once for all heads, not once per head
    for name, h in doc["heads"].items():
        for warning in h["warnings"]:
            heads_by_warning.setdefault(warning, []).append(name)
    for warning, names in heads_by_warning.items():
        messages.warn(f"{', '.join(names)}: {warning}")
    messages.note(doc["bias"])
    if counts["undecodable"]:
        messages.note(f"{messages.plural(counts['undecodable'], 'undecodable file')} not scored (listed in the JSON)")
    variant = doc["variant"]
    messages.info(
        f"installed {variant['name']} (thresholds over {variant['parent']}'s files, digest {variant['parent_digest'][:16]}…): "
        f"codescan scan --weights {variant['name']} ..."
    )


def calibrate_command(
    data: Annotated[
        Path,
        typer.Option(metavar="DIR|CSV", help="Folder with real/** and fake/<generator>/** (or real/ alone), or a CSV manifest (path,label[,generator]).",
                     show_default=False),
    ],
    fpr: Annotated[float, typer.Option(metavar="X", help="Target false-positive rate on real photos, e.g. 0.01.", show_default=False)],
    head: Annotated[HeadChoice, typer.Option(help="Head to calibrate; all = every head in the bundle. The others keep theirs.")] = "all",
    out: Annotated[
        Optional[str], typer.Option(metavar="NAME", help="Variant to install. Default: <weights>-fpr<FPR>, e.g. code-fpr0.01.")
    ] = None,
    weights: WeightsOpt = None,
    crops: CropsOpt = defaults.CROPS,
    engine: EngineOpt = defaults.ENGINE,
    precision: PrecisionOpt = defaults.PRECISION,
    batch_size: BatchSizeOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Choose each head's threshold for a target false-positive rate on your photos; install it as a bundle variant."""
    import json

    if importlib.util.find_spec("scipy") is None:
        raise UsageError("codescan calibrate needs scipy for its exact intervals: pip install 'codescan[train]'")
    from codescan.train.commands import (
        BIAS_NOTE,
        CalibrationError,
        EvalConfig,
        check_target,
        load_samples,
        operating_point,
        progress_bar,
        score_samples,
    )
    from codescan.weights.bundle import check_variant_name, install_variant, load_bundle
    from codescan.weights.store import WeightsError, chosen_name

    weights = chosen_name(weights)

    target = check_target(fpr)
    base = load_bundle(weights)  # names the variant and refuses a bad --out before any image is embedded
    name = check_variant_name(out or f"{base.parent or base.name}-fpr{target:g}", base)
    if all(s.is_fake for s in load_samples(data)):
        raise UsageError(f"{data}: no real images; a false-positive rate needs real photos (real/** or label real)")

    config = EvalConfig(data=data, weights=weights, head=head, crops=crops, engine=engine, precision=precision, batch_size=batch_size)
    with progress_bar(err_console(), quiet) as progress:
        task = progress.add_task("embedding", total=None)
        scored = score_samples(config, lambda done, total: progress.update(task, completed=done, total=total))
    base = load_bundle(weights)
    if base.digest != scored.run["weights"]["sha256"]:
        raise WeightsError(f"bundle {weights!r} changed while calibrating; run calibrate again")

    is_fake = scored.is_fake
    points = {}
    for h, s in scored.scores.items():
        try:
            points[h] = operating_point(s[~is_fake], s[is_fake], target)
        except CalibrationError as exc:  # a NaN or infinite score: no threshold is chosen from it
            raise CalibrationError(f"{h} head: {exc}; nothing installed") from None
    n_real, n_fake = int((~is_fake).sum()), int(is_fake.sum())
    data_sha256 = _data_sha256([(s.path, s.label) for s in scored.samples])
    origin = {
        "kind": "calibrated", "target_fpr": target, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": str(data.resolve()), "data_sha256": data_sha256, "n_real": n_real, "n_fake": n_fake,
        "engine": scored.run["engine"], "precision": scored.run["precision"], "crops": crops,
    }
    variant = install_variant(name, base, {h: {"threshold": p.threshold, "origin": origin} for h, p in points.items()})

    doc = _document(scored, target, data_sha256, variant, {h: p.to_dict() for h, p in points.items()}, BIAS_NOTE)
    if not quiet:
        _render(doc)
    print(json.dumps(doc, indent=2, allow_nan=False))  # strict JSON: a NaN would raise, never print bare


def _document(scored: Any, target: float, data_sha256: str, variant: Any, points: dict[str, dict[str, Any]], bias: str) -> dict[str, Any]:
    """calibrate's JSON on stdout (the schema in this module's docstring)."""
    is_fake = scored.is_fake
    return {
        "schema_version": CALIBRATE_SCHEMA_VERSION,
        "codescan": __version__,
        **scored.run,
        "data_sha256": data_sha256,
        "target_fpr": target,
        "variant": {"name": variant.name, "parent": variant.parent, "parent_digest": variant.meta["variant"]["parent_digest"]},
        "counts": {
            "files": len(scored.samples) + len(scored.undecodable), "scored": len(scored.samples),
            "real": int((~is_fake).sum()), "fake": int(is_fake.sum()), "undecodable": len(scored.undecodable),
        },
        "heads": {h: {"previous_threshold": scored.thresholds[h], **p} for h, p in points.items()},
        "bias": bias.replace("NAME", variant.name),
        "undecodable": [asdict(u) for u in scored.undecodable],
    }


def register(app: typer.Typer) -> None:
    app.command("calibrate", cls=Command)(calibrate_command)
