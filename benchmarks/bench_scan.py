"""Whole-process throughput: codescan scan vs the reference pipeline, same files, same run.

The reference is what users run today: transformers ViTModel fp32 (pooler removed) +
torchvision CenterCrop(224)/ToTensor/Normalize + a torch DataLoader (batch 64, 2 workers,
torch's default threads) + the linear head (scikit-learn predict). Both run as fresh
processes, imports included, alternating, ``--repeats`` times; the median is reported. Also
prints steady-state rates (model loaded) and codescan's per-stage times measured in-process.

    python benchmarks/bench_scan.py --make jpeg1024 --count 512
    python benchmarks/bench_scan.py --make mixed --count 512
    python benchmarks/bench_scan.py --images DIR
    python benchmarks/bench_scan.py --make jpeg1024 --baseline ../before --repeats 3   # an earlier checkout, same run

Needs the test extra (transformers, scikit-learn, torchvision) for the reference and for the
random official-layout checkpoint it builds (the real weights are not downloadable here;
speed does not depend on weight values).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

REFERENCE = r"""
import sys, time, json
t0 = time.perf_counter()
import joblib, numpy as np, torch, transformers
from PIL import Image
from torchvision import transforms
folder, ckpt = sys.argv[1], sys.argv[2]
import os
paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs)
tf = transforms.Compose([transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
class DS(torch.utils.data.Dataset):
    def __len__(self): return len(paths)
    def __getitem__(self, i): return tf(Image.open(paths[i]).convert("RGB"))
model = transformers.ViTModel.from_pretrained(ckpt, add_pooling_layer=False).eval()
clf = joblib.load(os.path.join(ckpt, "sklearn/linear_tot_classifier_epoch-32.sav"))
loader = torch.utils.data.DataLoader(DS(), batch_size=64, num_workers=2)
t1 = time.perf_counter()
preds = []
with torch.no_grad():
    for x in loader:
        preds.extend(clf.predict(model(pixel_values=x).last_hidden_state[:, 0].numpy()).tolist())
t2 = time.perf_counter()
print(json.dumps({"n": len(preds), "startup": t1 - t0, "steady": t2 - t1}))
"""


def make_images(kind: str, count: int, dest: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if kind in ("jpeg512", "jpeg1024"):  # jpeg512: bench_feed.py's set
            w = h = int(kind[4:])
            fmt = "JPEG"
        else:
            w, h = (int(v) for v in rng.integers(256, 2049, 2))
            fmt = ("JPEG", "PNG", "WEBP")[i % 3]
        small = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 13, (h, w, 3))
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
        im.save(dest / f"{i:06d}.{ext}", fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return dest


def build_checkpoint(dest: Path) -> Path:
    from official import build_official_checkpoint
    from PIL import Image

    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(16)]
    build_official_checkpoint(dest, ims, np.arange(16) % 2)
    return dest


def run_reference(folder: Path, ckpt: Path) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", REFERENCE, str(folder), str(ckpt)], capture_output=True, text=True, check=True)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall"] = time.perf_counter() - t
    return out


# The command line is the one surface every source tree shares, whatever its modules are called:
# a baseline tree is driven through it, so --baseline survives any move of the package's insides.
CLI = "import sys; from codescan.cli import main; sys.argv[0] = 'codescan'; main()"


def shim(tree: Path, dest: Path) -> Path:
    """An import path for `tree`'s codescan as an install lays it out (its own pyproject's
    package-dir, by symlinks), so a checkout of any commit can be measured beside this one."""
    sys.path.insert(0, str(HERE))
    from gpu_check import EXTENSION_PACKAGE, build_shim, package_dirs

    build_shim(tree, dest)
    # build_shim leaves compiled files out of the extension's own folder (gpu_check copies one built
    # for the lent machine's Python); here the tree's own build is the one to measure.
    folder = tree / package_dirs(tree)["codescan"] / EXTENSION_PACKAGE
    for built in folder.glob("*.so") if folder.is_dir() else ():
        shutil.copy2(built, dest / "codescan" / EXTENSION_PACKAGE / built.name)
    return dest


def run_codescan(folder: Path, home: Path, extra: list[str], tree: Path | None = None) -> dict:
    """One scan as a fresh process: this tree's installed `codescan`, or `tree` (a shim path) through its CLI."""
    env = {**os.environ, "CODESCAN_HOME": str(home)}
    cmd = [str(Path(sys.executable).parent / "codescan")]
    if tree is not None:
        cmd = [sys.executable, "-P", "-c", CLI]
        env["PYTHONPATH"] = str(tree)
    t = time.perf_counter()
    p = subprocess.run([*cmd, "scan", str(folder), "-q", "-o", "-", *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise RuntimeError(p.stderr)
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    return {"n": lines[-1]["files"], "steady": lines[-1]["seconds"], "wall": wall, "header": lines[0]}


def stages(folder: Path, home: Path, engine: str, precision: str) -> dict[str, float]:
    """Seconds per image for each stage, measured one at a time in this process."""
    os.environ["CODESCAN_HOME"] = str(home)
    from codescan.engines.registry import create_engine

    from codescan.decoding.decode import DecodeLimits, decode_file
    from codescan.inputs.walk import walk
    from codescan.output.reporters import make_reporter
    from codescan.scan.pipeline import Scanner
    from codescan.weights.bundle import load_bundle

    t = time.perf_counter()
    entries = list(walk([str(folder)]))
    n = len(entries)
    walk_s = time.perf_counter() - t
    t = time.perf_counter()
    crops = np.stack([decode_file(e.path, DecodeLimits()).crop for e in entries])
    decode_s = time.perf_counter() - t
    bundle = load_bundle("code")
    engine_obj = create_engine(bundle, engine, precision)  # type: ignore[arg-type]
    engine_obj.embed(crops[:32])
    t = time.perf_counter()
    emb = np.concatenate([engine_obj.embed(crops[i : i + 32]) for i in range(0, n, 32)])
    model_s = time.perf_counter() - t
    heads = bundle.head_set()
    t = time.perf_counter()
    heads.score_rows(emb)
    heads_s = time.perf_counter() - t
    scanner = Scanner(engine=engine, precision=precision)
    results = list(scanner.scan([str(folder)]))
    rep = make_reporter("jsonl", os.devnull)
    t = time.perf_counter()
    for i in range(0, len(results), 64):  # the job hands its reporter a batch's records at once
        rep.results(results[i : i + 64])
    rep.close()
    write_s = time.perf_counter() - t
    return {k: v / n * 1000 for k, v in dict(walk=walk_s, decode=decode_s, model=model_s, heads=heads_s, write=write_s).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, help="existing folder to scan")
    ap.add_argument("--make", choices=["jpeg1024", "mixed"], help="generate a folder of this kind")
    ap.add_argument("--count", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--skip-stages", action="store_true")
    ap.add_argument("--baseline", type=lambda p: Path(p).resolve(), help="also scan with the codescan of this source tree "
                    "(an earlier checkout with its C extension built), alternating with this one; its ratio is printed too")
    ap.add_argument(
        "--gate",
        type=Path,
        default=HERE.parent.parent / "shared" / "corpus" / "labeled",
        help="labelled folder to run `codescan gate` on first, so --precision auto may pick a reduced precision "
        "that passes it (as a user would after `codescan gate`); 'none' to skip",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = args.images or make_images(args.make or "jpeg1024", args.count, tmp_path / "images")
        ckpt = build_checkpoint(tmp_path / "ckpt")
        home = tmp_path / "home"
        env = {**os.environ, "CODESCAN_HOME": str(home)}
        exe = Path(sys.executable).parent / "codescan"
        subprocess.run([str(exe), "weights", "import", str(ckpt)], env=env, check=True, capture_output=True)
        if str(args.gate) != "none":
            gate = subprocess.run([str(exe), "gate", str(args.gate)], env=env, check=True, capture_output=True, text=True)
            for r in json.loads(gate.stdout):
                agreement = ", ".join(f"{k} {v:.2%}" for k, v in r["agreement"].items())
                print(f"gate {r['engine']} {r['precision']}: cosine min {r['cosine_min']:.5f}, agreement {agreement}, "
                      f"{'passed' if r['passed'] else 'failed'} ({r['images']} images of {args.gate})")
        # No scan cache: the warm-up scan would fill it and every timed scan would only read verdicts back.
        extra = ["--engine", args.engine, "--precision", args.precision, "--no-cache"]
        run_codescan(folder, home, extra)  # builds and caches the engine once, as a first scan would
        base = shim(args.baseline, tmp_path / "baseline") if args.baseline else None
        if base is not None:
            run_codescan(folder, home, extra, base)
        refs, ours, before = [], [], []
        for _ in range(args.repeats):
            refs.append(run_reference(folder, ckpt))
            ours.append(run_codescan(folder, home, extra))
            if base is not None:
                before.append(run_codescan(folder, home, extra, base))
        n = ours[0]["n"]
        ref_wall = statistics.median(r["wall"] for r in refs)
        our_wall = statistics.median(r["wall"] for r in ours)
        ref_steady = statistics.median(r["steady"] for r in refs)
        our_steady = statistics.median(r["steady"] for r in ours)
        h = ours[0]["header"]
        print(f"images: {n} from {folder if args.images else args.make}; cpus: {os.cpu_count()}; repeats: {args.repeats}")
        print(f"codescan engine: {h['engine']} {h['precision']} on {h['device']}")
        print(f"reference  whole process: {ref_wall:7.2f} s  {n / ref_wall:7.1f} img/s   steady: {n / ref_steady:7.1f} img/s")
        print(f"codescan   whole process: {our_wall:7.2f} s  {n / our_wall:7.1f} img/s   steady: {n / our_steady:7.1f} img/s")
        print(f"ratio (codescan / reference): whole {ref_wall / our_wall:.2f}x, steady {ref_steady / our_steady:.2f}x")
        if before:
            b_wall = statistics.median(r["wall"] for r in before)
            b_steady = statistics.median(r["steady"] for r in before)
            print(f"baseline   whole process: {b_wall:7.2f} s  {n / b_wall:7.1f} img/s   steady: {n / b_steady:7.1f} img/s"
                  f"   ({args.baseline})")
            print(f"ratio (baseline / reference): whole {ref_wall / b_wall:.2f}x, steady {ref_steady / b_steady:.2f}x; "
                  f"this tree / baseline: whole {b_wall / our_wall:.3f}x, steady {b_steady / our_steady:.3f}x")
        if not args.skip_stages:
            st = stages(folder, home, h["engine"], h["precision"])
            print("codescan stages, ms per image, one core each: " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()))


if __name__ == "__main__":
    main()
