"""Build the folder that benchmarks/gpu_check.sh reads on a lent GPU machine (default: .gpucheck/).

That machine has no network and receives only the working tree plus folders carried by name,
so everything the check compares against is made here, on CPU:

- ``home/``: a CODESCAN_HOME holding bundle ``code``. The published CoDE weights cannot be
  downloaded here, so this is a RANDOM STAND-IN built as the tests build theirs (a random
  transformers ViTModel in the aimagelab/CoDE layout, scikit-learn heads fit on its embeddings
  of the labelled crops not used for the gate), then installed with ``codescan weights import``.
  Speed does not depend on weight values; the precision gate does, so its verdict on this
  stand-in says whether the GPU path is sound, not whether the real weights pass.
- ``crops.png``: the gate crops, one (224, 224, 3) uint8 crop per 224-row band, cut by the
  scanner's own decode path. A tall PNG because it compresses photos about a fifth better than
  ``np.savez_compressed`` and the whole folder must fit the machine's 64 MiB carry limit.
- ``reference.npz``: each crop's label (fake or not), generator and path, and its fp32 embedding
  and per-head scores from codescan's CPU torch engine: the reference the GPU engines are gated against.
- ``wheels/``: platformdirs (codescan depends on it; that machine lacks it).
- ``ext/``: the crop-aware JPEG decoder built for that machine's Python (3.12), which has no
  libjpeg headers to build it; without it the end-to-end scan would measure Pillow's full decode.
- ``prepared.json``: what was built, from what, and with which bundle digest.

    .venv/bin/python benchmarks/gpu_prepare.py              # ../shared/corpus/labeled -> .gpucheck/
    .venv/bin/python benchmarks/gpu_prepare.py --ext-python /path/to/python3.12   # when python3.12 is not on PATH

then carry .gpucheck/ to the machine and run ``bash benchmarks/gpu_check.sh --out "$OUT"`` there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "labeled"
DEFAULT_OUT = REPO / ".gpucheck"
BUNDLE = "code"
CROP = 224
# The device tool carries at most 64 MiB (tree + carried folders); keep a margin for the tree growing.
CARRY_LIMIT_MIB = 60
TARGET_PYTHON = "3.12"  # the lent machine's python3
STAND_IN = (
    "RANDOM STAND-IN weights, not the published CoDE weights: a random transformers ViTModel "
    "(ViT-Tiny shape) in the aimagelab/CoDE layout, with scikit-learn heads fit on its embeddings "
    "of {fit} labelled crops that are not in the gate set"
)
CLI = ("-P", "-c", "from codescan.cli import main; main()")  # this interpreter's codescan, not the cwd's codescan/


@dataclass(frozen=True)
class Labelled:
    path: str  # relative to the corpus
    fake: bool
    generator: str
    crop: np.ndarray  # (224, 224, 3) uint8


def read_corpus(corpus: Path) -> list[Labelled]:
    """Every MANIFEST.csv row the scanner can decode, in manifest order, cut as the scanner cuts it."""
    from codescan.decoding.decode import DecodeLimits, decode_file
    from codescan.inputs.read import DecodeFailure

    out = []
    with open(corpus / "MANIFEST.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                crop = decode_file(str(corpus / row["path"]), DecodeLimits()).crop
            except DecodeFailure as exc:
                print(f"  skipped {row['path']}: {exc.code} ({exc.message})")
                continue
            out.append(Labelled(row["path"], row["label"] == "fake", row["generator_or_source"], crop))
    return out


def split(items: list[Labelled], gate_count: int) -> tuple[list[Labelled], list[Labelled]]:
    """Gate set: evenly spaced over the manifest (which is grouped by generator), so every source
    is represented; the heads are fit on the rest, so no gate crop sits in the kNN bank."""
    if len(items) < gate_count + 4:
        raise SystemExit(f"need at least {gate_count + 4} decodable images for {gate_count} gate crops, have {len(items)}")
    chosen = set(np.linspace(0, len(items) - 1, gate_count).round().astype(int).tolist())
    gate = [it for i, it in enumerate(items) if i in chosen]
    fit = [it for i, it in enumerate(items) if i not in chosen]
    if len({it.fake for it in fit}) < 2:
        raise SystemExit("the images left for fitting the heads need both real and fake examples")
    return gate, fit


def build_bundle(fit: list[Labelled], home: Path, seed: int) -> None:
    """The stand-in checkpoint in the official layout, imported with the CLI like a downloaded one."""
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from official import build_official_checkpoint

    with tempfile.TemporaryDirectory(prefix="gpucheck-ckpt-") as tmp:
        folder = Path(tmp) / "CoDE-stand-in"
        images = [Image.fromarray(it.crop) for it in fit]
        build_official_checkpoint(folder, images, np.array([int(it.fake) for it in fit]), seed=seed)
        env = {**os.environ, "CODESCAN_HOME": str(home)}
        subprocess.run([sys.executable, *CLI, "weights", "import", str(folder), "--name", BUNDLE], env=env, check=True)


def reference(home: Path, crops: np.ndarray) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """fp32 embeddings and head scores from codescan's own CPU engine: what a CPU scan reports."""
    os.environ["CODESCAN_HOME"] = str(home)
    from codescan.engines.registry import create_engine

    from codescan.weights.bundle import load_bundle

    bundle = load_bundle(BUNDLE)
    engine = create_engine(bundle, "torch", "fp32")
    emb = np.concatenate([engine.embed(crops[i : i + 64]) for i in range(0, len(crops), 64)])
    heads = bundle.head_set()
    rows = heads.scores(emb)
    scores = {name: np.array([r[name] for r in rows], dtype=np.float64) for name in heads.names()}
    meta = {
        "bundle": BUNDLE,
        "digest": bundle.digest,
        "engine": engine.name,
        "precision": engine.precision,
        "device": engine.device,
        "thresholds": {n: heads.threshold(n) for n in heads.names()},
    }
    return meta, emb, scores


def save_crops(crops: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(crops.reshape(-1, CROP, 3)).save(path, "PNG", compress_level=9)


def build_extension(python: str, dest: Path) -> str:
    """codescan/decoding/_jpegregion for the lent machine's Python; returns what happened, in words.

    Built like setuptools would, but by hand: that Python is not a venv here, and only its
    headers and extension suffix are needed. The module links no libjpeg (it binds Pillow's at
    run time), so the result depends only on the CPython ABI and glibc.
    """
    probe = (
        "import sys, sysconfig, json; "
        "print(json.dumps([sys.version, sysconfig.get_paths()['include'], sysconfig.get_config_var('EXT_SUFFIX')]))"
    )
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"not built: {python} does not run here ({exc}); the check then decodes JPEGs with Pillow"
    version, include, suffix = json.loads(found.stdout)
    if not version.startswith(TARGET_PYTHON + "."):
        return f"not built: {python} is Python {version.split()[0]}, the lent machine runs {TARGET_PYTHON}"
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"_jpegregion{suffix}"
    cc = sysconfig.get_config_var("CC") or "cc"
    cmd = [*cc.split(), "-O3", "-DNDEBUG", "-fwrapv", "-fPIC", "-shared", f"-I{include}",
           str(REPO / "codescan" / "decoding" / "_jpegregion.c"), "-ldl", "-o", str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return f"not built: {' '.join(cmd)} failed: {done.stderr.strip()[-500:]}"
    return target.name


def download_wheels(dest: Path) -> list[str]:
    """platformdirs as a py3-none-any wheel the lent machine installs with pip --no-index."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", TARGET_PYTHON,
         "--implementation", "cp", "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(dest), "platformdirs"],
        check=True,
    )
    return sorted(p.name for p in dest.glob("*.whl"))


def exclude_from_git(out: Path) -> None:
    """Keep the prepared folder out of `git status` without touching .gitignore (other people's file)."""
    try:
        rel = out.resolve().relative_to(REPO)
    except ValueError:
        return  # outside the repository: nothing to hide
    found = subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=REPO, capture_output=True, text=True)
    if found.returncode != 0:
        return
    exclude = REPO / found.stdout.strip()
    line = f"/{rel.as_posix()}/"
    present = exclude.read_text().splitlines() if exclude.exists() else []
    if line not in present:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a") as fh:
            fh.write(("\n" if present and present[-1] else "") + line + "\n")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def tree_bytes() -> int:
    """What the device tool carries from the tree itself: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True)
    paths = [REPO / os.fsdecode(p) for p in listed.stdout.split(b"\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def fresh_folder(out: Path) -> None:
    """Replace an earlier prepared folder, finished or not, never some other folder given by mistake.

    prepared.json is written first as a marker and last with the contents, so a folder whose
    preparation died is both recognisable here and refused by the check.
    """
    if out.exists():
        if any(out.iterdir()) and not (out / "prepared.json").is_file():
            raise SystemExit(f"{out} exists and is not a prepared folder (no prepared.json); refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "prepared.json").write_text('{"incomplete": "gpu_prepare.py did not finish"}\n')


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="labelled folder with MANIFEST.csv")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--crops", type=int, default=320, help="gate crops to carry (the rest fit the heads)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-wheel", action="store_true", help="skip the platformdirs download (needs a package index)")
    ap.add_argument("--ext-python", default=f"python{TARGET_PYTHON}", help=f"a Python {TARGET_PYTHON} with its headers")
    ap.add_argument("--no-extension", action="store_true", help=f"skip building the JPEG decoder for Python {TARGET_PYTHON}")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()

    fresh_folder(out)
    print(f"reading {args.corpus / 'MANIFEST.csv'}")
    gate, fit = split(read_corpus(args.corpus), args.crops)
    print(f"  {len(gate)} gate crops, {len(fit)} crops to fit the stand-in heads")
    print("building the stand-in bundle (random ViT + heads fit on it; NOT the published CoDE weights)")
    build_bundle(fit, out / "home", args.seed)
    crops = np.stack([it.crop for it in gate])
    print(f"embedding {len(crops)} gate crops with codescan's CPU fp32 engine")
    ref, emb, scores = reference(out / "home", crops)
    save_crops(crops, out / "crops.png")
    np.savez_compressed(
        out / "reference.npz",
        embeddings=emb,
        fake=np.array([it.fake for it in gate]),
        generators=np.array([it.generator for it in gate]),
        paths=np.array([it.path for it in gate]),
        **{f"score_{name}": s for name, s in scores.items()},
    )
    extension = "skipped (--no-extension)" if args.no_extension else build_extension(args.ext_python, out / "ext")
    wheels = [] if args.no_wheel else download_wheels(out / "wheels")
    prepared = {
        "weights": STAND_IN.format(fit=len(fit)),
        "reference": ref,
        "crops": {"file": "crops.png", "count": len(gate), "fake": sum(it.fake for it in gate), "source": "MANIFEST.csv"},
        "fit_crops": len(fit),
        "seed": args.seed,
        "jpeg_extension": extension,
        "wheels": wheels,
    }
    (out / "prepared.json").write_text(json.dumps(prepared, indent=2) + "\n")
    exclude_from_git(out)

    mib = 1 << 20
    folder, tree = folder_bytes(out), tree_bytes()
    print(f"JPEG extension for Python {TARGET_PYTHON}: {extension}")
    print(f"wheels: {', '.join(wheels) or 'none'}")
    print(f"{out}: {folder / mib:.1f} MiB; with the tree ({tree / mib:.1f} MiB) {(folder + tree) / mib:.1f} MiB to carry")
    print(prepared["weights"])
    if folder + tree > CARRY_LIMIT_MIB * mib:
        raise SystemExit(f"over {CARRY_LIMIT_MIB} MiB: prepare fewer --crops")


if __name__ == "__main__":
    main()
