"""Leave-one-generator-out on the labeled corpus: does `codescan train` detect a generator it never saw,
and does it beat a detector that looks only at file metadata?

For every generator with at least ``--min-images`` fakes, one fold: train on the training reals and
the fakes of every other generator (small generators included), test on the held-out reals and
the held-out generator's fakes. Reals are split once by content hash (same split in every fold),
so no real image is ever on both sides and the folds differ only in their fakes.

The shortcut baseline is a logistic regression on width, height, format and file size, fit on
the very same splits. The labeled corpus comes from many sources whose sizes and formats differ
systematically (32×32 CIFAKE, 1024² PNG generators, JPEG photo sets), so metadata alone can
separate much of it; a learned detector is worth something only where it beats that.

Only manifests are written into the work dir (absolute paths to the corpus); images are never
copied. Bundles go into a private CODESCAN_HOME under the work dir.

    benchmarks/train_labeled.sh --dry-run                # manifests + baseline only (seconds)
    benchmarks/train_labeled.sh                          # the full benchmark, --epochs 3

Budget on the 2-core development CPU (no GPU): the default, three full epochs per fold (~14
steps of 32 images, 4 views each), took 32 minutes for the 8 folds on an idle machine (training
225–264 s per fold, evaluation 3–4 s); each further epoch adds about 75 s per fold, so --epochs 5
is the most that stays within an hour. --steps-per-epoch N shortens epochs for a quicker look.
Checkpoints and bundles take ~850 MB in the work dir.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from codescan.train.data import Sample, load_samples, split_by_hash
from codescan.train.metrics import binary_metrics
from PIL import Image

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "labeled"
HEADS = ("linear", "knn", "ocsvm")
SPLIT_SALT = "logo-reals"


@dataclass(frozen=True)
class Fold:
    generator: str
    train: list[Sample]
    test: list[Sample]
    train_manifest: Path
    test_manifest: Path


@dataclass(frozen=True)
class Scores:
    auc: float | None
    ap: float | None
    balanced_accuracy: float | None


def write_manifest(path: Path, samples: Sequence[Sample]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "generator"])
        for s in samples:
            w.writerow([str(s.path.resolve()), s.label, s.generator])


def build_folds(corpus: Path, work: Path, min_images: int, test_fraction: float, only: Sequence[str]) -> list[Fold]:
    samples = load_samples(corpus / "MANIFEST.csv")
    reals = [s for s in samples if not s.is_fake]
    fakes = [s for s in samples if s.is_fake]
    train_reals, test_reals = split_by_hash(reals, test_fraction, salt=SPLIT_SALT)
    counts = Counter(s.generator for s in fakes)
    held_out = sorted(g for g, n in counts.items() if n >= min_images and (not only or g in only))
    folds = []
    for gen in held_out:
        fold_dir = work / f"fold-{gen}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        train = train_reals + [s for s in fakes if s.generator != gen]
        test = test_reals + [s for s in fakes if s.generator == gen]
        write_manifest(fold_dir / "train.csv", train)
        write_manifest(fold_dir / "test.csv", test)
        folds.append(Fold(gen, train, test, fold_dir / "train.csv", fold_dir / "test.csv"))
    return folds


def shortcut_features(samples: Sequence[Sample]) -> tuple[np.ndarray, list[str]]:
    """(log width, log height, log file size) and the format name per file, read from headers only."""
    numeric, formats = [], []
    for s in samples:
        with Image.open(s.path) as im:
            numeric.append([np.log(im.width), np.log(im.height), np.log(max(1, s.path.stat().st_size))])
            formats.append(im.format or "unknown")
    return np.array(numeric, dtype=np.float64), formats


def baseline(fold: Fold) -> Scores:
    """Logistic regression on metadata; formats unseen in training get no one-hot bit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train, f_train = shortcut_features(fold.train)
    x_test, f_test = shortcut_features(fold.test)
    known = sorted(set(f_train))
    scaler = StandardScaler().fit(x_train)

    def design(x: np.ndarray, formats: list[str]) -> np.ndarray:
        onehot = np.array([[f == k for k in known] for f in formats], dtype=np.float64)
        return np.hstack([scaler.transform(x), onehot])

    y_train = np.array([s.is_fake for s in fold.train])
    y_test = np.array([s.is_fake for s in fold.test])
    model = LogisticRegression(class_weight="balanced", max_iter=5000).fit(design(x_train, f_train), y_train)
    m = binary_metrics(y_test, model.decision_function(design(x_test, f_test)), 0.0)
    return Scores(m.auc, m.ap, m.balanced_accuracy)


def _run(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    with open(log, "wb") as err:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err)
    if p.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{cmd[1]} failed (exit {p.returncode}), see {log}:\n" + "\n".join(tail))
    return p


def codescan_fold(fold: Fold, args: argparse.Namespace, env: dict[str, str]) -> tuple[dict[str, Scores], dict[str, float]]:
    """Train a bundle on the fold, evaluate it on the held-out generator; per-head scores and seconds."""
    exe = args.codescan
    name = f"logo-{fold.generator}"
    folder = fold.train_manifest.parent
    train_cmd = [exe, "train", "--data", str(fold.train_manifest), "--init", args.init, "--out", name,
                 "--epochs", str(args.epochs), *args.train_arg]
    if args.steps_per_epoch:
        train_cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
    # The store is this benchmark's own: a rerun starts every fold afresh instead of meeting the
    # previous run's checkpoint (which `codescan train` rightly refuses to overwrite).
    shutil.rmtree(Path(env["CODESCAN_HOME"]) / "train" / name, ignore_errors=True)
    started = time.perf_counter()
    (folder / "train.json").write_bytes(_run(train_cmd, env, folder / "train.log").stdout)
    trained = time.perf_counter()
    p = _run([exe, "eval", "--data", str(fold.test_manifest), "--weights", name, "--quiet"], env, folder / "eval.log")
    evaluated = time.perf_counter()
    (folder / "eval.json").write_bytes(p.stdout)
    report = json.loads(p.stdout)
    scores = {
        head: Scores(r["overall"]["auc"], r["overall"]["ap"], r["overall"]["balanced_accuracy"])
        for head, r in report["heads"].items()
    }
    return scores, {"train": trained - started, "eval": evaluated - trained}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def mean_scores(scores: list[Scores]) -> Scores:
    return Scores(*(_mean([getattr(s, f) for s in scores]) for f in ("auc", "ap", "balanced_accuracy")))


def _fmt(v: float | None) -> str:
    return "    —" if v is None else f"{v:5.3f}"


def print_table(title: str, columns: Sequence[str], rows: dict[str, list[Scores]]) -> None:
    """One line per held-out generator, AUC / AP / balanced accuracy per column group."""
    print(f"\n{title}")
    print(f"{'held out':<18}" + "".join(f"  {c:^17}" for c in columns))
    print(f"{'':<18}" + f"  {'AUC':>5} {'AP':>5} {'bal':>5}" * len(columns))
    for gen, scores in rows.items():
        print(f"{gen:<18}" + "".join(f"  {_fmt(s.auc)} {_fmt(s.ap)} {_fmt(s.balanced_accuracy)}" for s in scores))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="folder with MANIFEST.csv")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "codescan-logo",
                    help="manifests, logs, bundles (~850 MB), results")
    ap.add_argument("--min-images", type=int, default=15, help="hold out generators with at least this many fakes")
    ap.add_argument("--test-fraction", type=float, default=0.3, help="share of reals held out for testing")
    ap.add_argument("--generators", nargs="*", default=[], help="run only these folds")
    ap.add_argument("--epochs", type=int, default=3, help="codescan train --epochs: the time budget knob (see Budget above)")
    ap.add_argument("--steps-per-epoch", type=int, help="codescan train --steps-per-epoch (default: a full epoch)")
    ap.add_argument("--init", default="scratch", help="codescan train --init")
    ap.add_argument("--train-arg", action="append", default=[], help="extra codescan train argument (repeatable), "
                    "e.g. --train-arg=--views=3")
    ap.add_argument("--codescan", default=str(Path(sys.executable).parent / "codescan"), help="the codescan executable")
    ap.add_argument("--dry-run", action="store_true", help="write manifests and run only the shortcut baseline")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.dry_run and not shutil.which(args.codescan):
        raise SystemExit(f"{args.codescan}: not found (use --codescan)")
    work = args.work.resolve()
    env = {**os.environ, "CODESCAN_HOME": str(work / "home")}
    folds = build_folds(args.corpus, work, args.min_images, args.test_fraction, args.generators)
    if not folds:
        raise SystemExit("no generator has enough images for a fold")

    results: list[dict[str, Any]] = []
    base_rows: dict[str, list[Scores]] = {}
    model_rows: dict[str, dict[str, Scores]] = {}
    started = time.perf_counter()
    for fold in folds:
        entry: dict[str, Any] = {
            "generator": fold.generator,
            "train": dict(Counter(s.label for s in fold.train)),
            "test": dict(Counter(s.label for s in fold.test)),
            "baseline": asdict(b := baseline(fold)),
        }
        base_rows[fold.generator] = [b]
        if not args.dry_run:
            heads, seconds = codescan_fold(fold, args, env)
            entry["codescan"] = {h: asdict(s) for h, s in heads.items()}
            entry["seconds"] = seconds
            model_rows[fold.generator] = heads
            print(f"{fold.generator}: trained in {seconds['train']:.0f}s, evaluated in {seconds['eval']:.0f}s",
                  file=sys.stderr, flush=True)
        results.append(entry)

    base_rows["mean"] = [mean_scores([r[0] for r in base_rows.values()])]
    summary: dict[str, Any] = {"baseline": asdict(base_rows["mean"][0])}
    print_table("shortcut baseline: logistic regression on width, height, format, file size", ["baseline"], base_rows)
    if model_rows:
        heads = [h for h in HEADS if all(h in r for r in model_rows.values())]
        rows = {g: [r[h] for h in heads] for g, r in model_rows.items()}
        rows["mean"] = [mean_scores([r[h] for r in model_rows.values()]) for h in heads]
        summary["codescan"] = {h: asdict(s) for h, s in zip(heads, rows["mean"])}
        print_table(f"codescan train --init {args.init} --epochs {args.epochs}, then codescan eval", heads, rows)

    doc = {
        "corpus": str(args.corpus.resolve()),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "split": {"salt": SPLIT_SALT, "test_fraction": args.test_fraction},
        "folds": results,
        "mean": summary,
        "seconds": time.perf_counter() - started,
    }
    out = work / ("logo-dry-run.json" if args.dry_run else "logo.json")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
