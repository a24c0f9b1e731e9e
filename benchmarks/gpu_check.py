"""One-shot check on a lent GPU machine: the fp16/fp32 precision gate, model throughput, scan rate, training.

Such a machine is lent for minutes, has no network, and gets a copy of the working tree plus the
folder benchmarks/gpu_prepare.py built beforehand (.gpucheck/: a stand-in weights bundle, labelled
crops with their CPU fp32 embeddings and scores, wheels). The whole lease may end mid-run, so the
JSON report is rewritten after every step (and every throughput configuration), and a step that
fails records its error and lets the next one run: whatever was measured comes back. The exit code
is 0 whenever the script itself worked, failed steps included; the JSON says which.

--dry-run runs the same steps on the CPU (the CUDA engine's device="cpu" path, tiny batches, an
onnxruntime fp32 scan of a few files) so the script is tested where there is no GPU; its numbers
mean nothing. Usually started through gpu_check.sh, which also keeps a log beside the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from codescan.engines.protocol import Engine

    from codescan.model.heads import HeadSet
    from codescan.weights.bundle import Bundle

REPO = Path(__file__).resolve().parents[1]
# The codescan on PYTHONPATH, whatever PATH holds. -P: with the tree's root first on sys.path (the
# working directory of `python -c`), its codescan/ folder, which lacks engines/, would shadow the install.
CLI = ("-P", "-c", "from codescan.cli import main; main()")
BUNDLE = "code"
CROP = 224
SIDE = 512  # generated JPEGs for the end-to-end scan
MIB = 1 << 20
PIP_TIMEOUT_S = 120
SCAN_TIMEOUT_S = 180  # with the steps before it, the run stays inside a 5-minute command

Result = dict[str, Any]
Save = Callable[[], None]


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    device: str  # "cuda", or "cpu" for --dry-run
    count: int  # files for the end-to-end scan
    workers: int  # decode processes for the scan, and image writers
    batches: tuple[int, ...]
    throughput_precision: str  # fp16 on the GPU; fp32 in a dry run, as the CPU emulates fp16 slowly
    repeats: int
    images_per_repeat: int  # per throughput repeat, rounded to whole batches
    parity_crops: int | None  # None: every carried crop
    scan_engine: tuple[str, str]
    train_batch: int  # the training smoke: images per step, steps in all (half before the checkpoint)
    train_steps: int
    train_gate: tuple[tuple[str, str], ...]  # the trained bundle's gate: candidates, where installed


def make_plan(dry_run: bool, count: int | None) -> Plan:
    cores = len(os.sched_getaffinity(0))
    if dry_run:
        return Plan(
            dry_run=True, device="cpu", count=count or 64, workers=cores, batches=(1, 2), throughput_precision="fp32",
            repeats=2, images_per_repeat=1, parity_crops=8, scan_engine=("onnxruntime", "fp32"),
            train_batch=4, train_steps=4, train_gate=(("onnxruntime", "int8"),),
        )  # fmt: skip
    return Plan(
        dry_run=False, device="cuda", count=count or 10_000, workers=cores, batches=(64, 256, 1024), throughput_precision="fp16",
        repeats=5, images_per_repeat=8192, parity_crops=None, scan_engine=("cuda", "fp16"),
        train_batch=32, train_steps=20, train_gate=(("tensorrt", "fp16"), ("cuda", "fp16")),
    )  # fmt: skip


# ------------------------------------------------------------------------------------ the report


class Report:
    """The JSON file, always complete and parseable: written whole to a temp file, then renamed."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {**meta, "started_utc": _now(), "finished_utc": None, "steps": {}}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, self.path)

    def run(self, name: str, step: Callable[[Result, Save], str | None]) -> None:
        """Run one step; it fills `result` as it goes and returns a reason to call it skipped, or None."""
        result: Result = {}
        entry: dict[str, Any] = {"status": "running", "result": result}
        self.doc["steps"][name] = entry
        self.save()
        print(f"[{name}] running", flush=True)
        started = time.perf_counter()
        try:
            reason = step(result, self.save)
            entry["status"] = "skipped" if reason else "ok"
            if reason:
                entry["reason"] = reason
        except Exception as exc:  # noqa: BLE001 - any failure is recorded and the next step runs
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=-6))
        entry["seconds"] = round(time.perf_counter() - started, 2)
        self.save()
        print(f"[{name}] {entry['status']} in {entry['seconds']} s", flush=True)

    def finish(self) -> None:
        self.doc["finished_utc"] = _now()
        self.save()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _tail(text: str, chars: int = 1500) -> str:
    return text if len(text) <= chars else "…" + text[-chars:]


# ------------------------------------------------------------------------------------ install


def codescan_origin() -> str | None:
    """Where a fresh interpreter imports the CUDA engine from (PYTHONPATH as now), or None if it cannot."""
    probe = "import codescan.engines.cuda_engine as m; print(m.__file__)"
    found = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def imports_this_tree(cuda_engine: Path, repo: Path) -> bool:
    """Whether the installed package holds this tree's code: an editable install, or a copy built
    from it in a venv anywhere (inside the checkout or not), file for file."""
    resolved = cuda_engine.resolve()
    if resolved == (repo / package_dirs(repo)["codescan.engines"] / cuda_engine.name).resolve():
        return True  # editable: the tree itself
    installed = resolved.parents[1]  # site-packages/codescan (engines/ is codescan/engines/ there)
    dirs = package_dirs(repo)
    mapped = {name.split(".", 1)[1] for name in dirs if name.startswith("codescan.")}  # installed inside codescan/
    for package, folder in dirs.items():
        here = installed.joinpath(*package.split(".")[1:])
        source = repo / folder
        names = sorted(str(p.relative_to(source)) for p in source.rglob("*.py"))
        found = [p.relative_to(here) for p in here.rglob("*.py")]
        if sorted(str(p) for p in found if package != "codescan" or p.parts[0] not in mapped) != names:
            return False
        if any((here / n).read_bytes() != (source / n).read_bytes() for n in names):
            return False
    return True


def package_dirs(repo: Path) -> dict[str, str]:
    """pyproject's package-dir: codescan.engines lives in engines/, so the tree root alone is no import path."""
    with open(repo / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]["package-dir"]


EXTENSION_PACKAGE = "decoding"  # codescan.decoding._jpegregion (pyproject's ext-modules)


def build_shim(repo: Path, target: Path) -> None:
    """The installed layout made of symlinks into the tree: importable with nothing built or copied."""
    dirs = package_dirs(repo)
    package = target / "codescan"
    package.mkdir(parents=True)
    for entry in (repo / dirs["codescan"]).iterdir():
        if entry.name == EXTENSION_PACKAGE:  # a folder of its own: the prebuilt extension is copied into it
            (package / entry.name).mkdir()
            for inner in entry.iterdir():
                if inner.name != "__pycache__" and not inner.name.endswith(".so"):
                    (package / entry.name / inner.name).symlink_to(inner)
        elif entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in dirs.items():
        if name.startswith("codescan."):
            (package / name.split(".", 1)[1]).symlink_to(repo / folder)


def add_prebuilt_extension(ext_dir: Path, package: Path) -> str:
    """The JPEG region decoder gpu_prepare.py built for this Python, where the install built none
    or built one that cannot bind to Pillow's libjpeg (headers of another ABI on that machine)."""
    name = f"_jpegregion{sysconfig.get_config_var('EXT_SUFFIX')}"
    built = (package / name).exists()
    if built and _binds(package.parents[1]):
        return f"{name}: built by the install"
    if not (ext_dir / name).is_file():
        return f"none usable for this Python ({name} not prepared): JPEGs decode with Pillow"
    shutil.copy2(ext_dir / name, package / name)
    why = " (the install's own build could not bind to Pillow's libjpeg)" if built else ""
    return f"{name}: prebuilt by gpu_prepare.py{why}"


def _binds(site: Path) -> bool:
    """Whether the crop-aware decoder under `site` binds to the libjpeg Pillow loaded."""
    probe = f"import sys; sys.path.insert(0, {str(site)!r}); from codescan.decoding.decode import jpeg_region_library as l; print(l())"
    done = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and done.stdout.strip() not in ("", "None")


def pip_install(target: Path, wheels: list[Path]) -> str | None:
    """This tree and the wheels into `target` as a user's offline install would; the error, or None."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--target", str(target), str(REPO), *map(str, wheels)]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"pip install took over {PIP_TIMEOUT_S} s"
    return None if done.returncode == 0 else _tail(done.stdout + done.stderr)


def use_path(folder: Path) -> None:
    """Put `folder` first on the import path, for this process and the scans it starts."""
    sys.path.insert(0, str(folder))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(folder) + (os.pathsep + old if old else "")


def install(result: Result, prepared: Path, target: Path) -> str | None:
    """Make this tree's codescan importable with the machine's own packages, offline.

    pip builds it like a user's install would (with the C extension where libjpeg headers exist);
    where pip cannot (no setuptools new enough, say), the symlinked layout does the same job.
    """
    origin = codescan_origin()
    if origin and imports_this_tree(Path(origin), REPO):
        return f"codescan already imports this tree's code ({origin})"
    shutil.rmtree(target, ignore_errors=True)
    wheels = sorted((prepared / "wheels").glob("*.whl"))
    error = pip_install(target, wheels)
    if error is None:
        result["method"] = "pip install --no-deps --no-build-isolation --no-index --target"
    else:
        result["pip_error"] = error
        shutil.rmtree(target, ignore_errors=True)
        build_shim(REPO, target)
        for wheel in wheels:  # pure-Python wheels: unpacking is installing
            zipfile.ZipFile(wheel).extractall(target)
        result["method"] = "symlinked package layout (pip install failed)"
    result["wheels"] = [w.name for w in wheels]
    result["jpeg_extension"] = add_prebuilt_extension(prepared / "ext", target / "codescan" / EXTENSION_PACKAGE)
    use_path(target)
    origin = codescan_origin()
    if origin is None or not Path(origin).is_relative_to(target):
        raise RuntimeError(f"after installing into {target}, codescan.engines imports from {origin}")
    result["codescan"] = origin
    return None


# ------------------------------------------------------------------------------------ environment


def nvidia_smi(*query: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else None


def tensorrt_status() -> str:
    try:
        import tensorrt  # noqa: F401 - only whether it imports
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install's own error
        return f"skipped: tensorrt not importable ({type(exc).__name__}: {exc})"
    return f"importable, version {getattr(tensorrt, '__version__', '?')} (not exercised by this check)"


def versions(*dists: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def environment(result: Result, plan: Plan) -> None:
    import torch

    from codescan.decoding.decode import jpeg_decoder

    header = nvidia_smi() or ""
    cuda_driver = re.search(r"CUDA Version:\s*([\d.]+)", header)
    result.update(
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpus=os.cpu_count(),
        cpus_usable=len(os.sched_getaffinity(0)),
        memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
        packages=versions("torch", "torchvision", "timm", "numpy", "pillow", "onnxruntime", "safetensors", "platformdirs"),
        torch_cuda=torch.version.cuda,
        cuda_available=torch.cuda.is_available(),
        tensorrt=tensorrt_status(),
        jpeg_decoder=jpeg_decoder(),
        nvidia_smi=nvidia_smi("--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit", "--format=csv"),
        cuda_driver_api=cuda_driver.group(1) if cuda_driver else None,
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / (1 << 30), 1),
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    elif not plan.dry_run:
        raise RuntimeError("no CUDA GPU usable (torch.cuda.is_available() is False); the GPU steps will fail")


# ------------------------------------------------------------------------------------ prepared data


@dataclass(frozen=True)
class Prepared:
    meta: dict[str, Any]
    crops: np.ndarray  # (N, 224, 224, 3) uint8
    embeddings: np.ndarray  # (N, D) CPU fp32
    scores: dict[str, np.ndarray]  # head -> (N,) CPU fp32 scores
    paths: np.ndarray  # (N,) corpus paths, to name disagreements
    fake: np.ndarray  # (N,) bool
    generators: np.ndarray  # (N,) str: the generator, or the real photos' source


def load_prepared(folder: Path) -> Prepared:
    from PIL import Image

    meta = json.loads((folder / "prepared.json").read_text())
    with Image.open(folder / meta["crops"]["file"]) as im:
        crops = np.asarray(im.convert("RGB")).reshape(-1, CROP, CROP, 3)
    with np.load(folder / "reference.npz") as ref:
        scores = {k.removeprefix("score_"): ref[k] for k in ref.files if k.startswith("score_")}
        prepared = Prepared(meta, crops, ref["embeddings"], scores, ref["paths"], ref["fake"], ref["generators"])
    if len(prepared.crops) != len(prepared.embeddings):
        raise ValueError(f"{folder}: {len(prepared.crops)} crops but {len(prepared.embeddings)} reference embeddings")
    return prepared


def load_checked_bundle(prepared: Prepared) -> Bundle:
    """The carried bundle, refused unless it is the one the reference was computed with."""
    from codescan.weights.bundle import load_bundle

    bundle = load_bundle(BUNDLE)
    if bundle.digest != prepared.meta["reference"]["digest"]:
        raise RuntimeError("the bundle in CODESCAN_HOME is not the one the reference was computed with; re-run gpu_prepare.py")
    return bundle


def head_scores(heads: HeadSet, emb: np.ndarray) -> dict[str, np.ndarray]:
    rows = heads.score_rows(emb)  # (N, H)
    return {name: rows[:, i] for i, name in enumerate(heads.names())}


def release() -> None:
    """Return freed GPU memory now (callers drop their engine first), so each measurement starts alike."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ parity


def make_engine(bundle: Bundle, plan: Plan, precision: str) -> Engine:
    """On a GPU, exactly what `--engine cuda` builds; in a dry run, the same class on the CPU."""
    if plan.device == "cuda":
        from codescan.engines.registry import create_engine

        return create_engine(bundle, "cuda", precision)  # type: ignore[arg-type]
    from codescan.engines.cuda_engine import CudaEngine

    return CudaEngine(bundle.encoder_config, bundle.encoder_state(), precision, device="cpu")


def compare(heads: HeadSet, ref_scores: dict[str, np.ndarray], ref_emb: np.ndarray, emb: np.ndarray, paths: np.ndarray) -> Result:
    """The gate's measures (engines/gate.py), with verdicts compared to the carried CPU scores."""
    from codescan.engines.gate import cosine, judge_gate

    cos = cosine(ref_emb, emb)
    per_head: Result = {}
    for name, scores in head_scores(heads, emb).items():
        threshold, ref = heads.threshold(name), ref_scores[name]
        differ = (ref > threshold) != (scores > threshold)
        per_head[name] = {
            "agreement": float(1 - differ.mean()),
            "disagreements": int(differ.sum()),
            "disagreeing": [
                {"path": str(paths[i]), "cpu_score": float(ref[i]), "score": float(scores[i])} for i in np.flatnonzero(differ)[:10]
            ],
            "max_abs_score_diff": float(np.abs(scores - ref).max()),
            # How close the reference verdicts sit to the threshold: flips can only happen within
            # max_abs_score_diff of it, so these say whether a failure is the engine or a thin margin.
            "cpu_margin_min": float(np.abs(ref - threshold).min()),
            "cpu_margin_median": float(np.median(np.abs(ref - threshold))),
            "threshold": threshold,
        }
    passed, reasons = judge_gate(float(cos.min()), {h: v["disagreements"] for h, v in per_head.items()}, len(cos))
    gate = "pass" if passed else "fail"
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "heads": per_head, "gate": gate, "reasons": reasons}


def parity(result: Result, save: Save, plan: Plan, folder: Path) -> None:
    from codescan.engines.gate import MIN_AGREEMENT, MIN_AGREEMENT_BOUND, MIN_COSINE

    prepared = load_prepared(folder)
    bundle = load_checked_bundle(prepared)
    heads = bundle.head_set()
    n = min(plan.parity_crops or len(prepared.crops), len(prepared.crops))
    crops, ref_emb, paths = prepared.crops[:n], prepared.embeddings[:n], prepared.paths[:n]
    ref_scores = {k: v[:n] for k, v in prepared.scores.items()}
    here = head_scores(heads, ref_emb)
    result.update(
        images=n,
        reference="{engine} {precision} on {device}, computed by gpu_prepare.py".format(**prepared.meta["reference"]),
        rule=f"cosine >= {MIN_COSINE} for every image, >= {MIN_AGREEMENT:.1%} identical verdicts (score > threshold) per head, "
        f"and >= {MIN_AGREEMENT_BOUND:.0%} agreement shown at 95% confidence (one-sided Clopper-Pearson)",
        # Head math on the carried embeddings, here vs where they were prepared: isolates the engine.
        head_scores_here_vs_prepared_max_abs_diff=max(float(np.abs(here[k] - ref_scores[k]).max()) for k in here),
    )
    for precision in ("fp16", "fp32"):
        engine = make_engine(bundle, plan, precision)
        emb = engine.embed(crops)
        result[precision] = {
            "engine": engine.name,
            "device": engine.device,
            **compare(heads, ref_scores, ref_emb, emb, paths),
            "cuda_graphs_active": bool(getattr(engine, "_use_graphs", False)),  # False after a capture fell back
        }
        del engine
        release()
        save()
    result["gate"] = {p: result[p]["gate"] for p in ("fp16", "fp32")}


# ------------------------------------------------------------------------------------ throughput


class Device:
    """Synchronisation and peak memory where there is a GPU; no-ops on the CPU."""

    def __init__(self, kind: str) -> None:
        import torch

        self.torch = torch
        self.gpu = kind == "cuda"

    def sync(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.gpu:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / MIB, 1) if self.gpu else None


def time_engine(bundle: Bundle, crops: np.ndarray, plan: Plan, batch: int, graphs: bool) -> Result:
    """images/s of CudaEngine.embed on full batches of decoded crops, warm-up (and graph capture) excluded."""
    from codescan.engines.cuda_engine import CudaEngine

    device = Device(plan.device)
    state, precision = bundle.encoder_state(), plan.throughput_precision
    engine = CudaEngine(bundle.encoder_config, state, precision, device=plan.device, max_batch=batch, cuda_graphs=graphs)
    x = np.resize(crops, (batch, CROP, CROP, 3))  # the carried crops, repeated to fill the batch
    iters = max(1, plan.images_per_repeat // batch)
    try:
        for _ in range(2):  # kernel selection, cuBLAS workspaces, the graph's capture and its check
            engine.embed(x)
        device.sync()
        device.reset_peak()
        times = []
        for _ in range(plan.repeats):
            started = time.perf_counter()
            for _ in range(iters):
                engine.embed(x)
            device.sync()
            times.append(time.perf_counter() - started)
        rates = [iters * batch / t for t in times]
        return {
            "images_per_s_best": round(max(rates), 1),
            "images_per_s_median": round(statistics.median(rates), 1),
            "ms_per_batch_median": round(statistics.median(times) / iters * 1000, 3),
            "batches_per_repeat": iters,
            "repeats": plan.repeats,
            "cuda_graphs_active": bool(getattr(engine, "_use_graphs", False)),
            "peak_memory_mib": device.peak_mib(),
        }
    finally:
        del engine
        release()


def throughput(result: Result, save: Save, plan: Plan, folder: Path) -> None:
    prepared = load_prepared(folder)
    bundle = load_checked_bundle(prepared)
    result.update(
        precision=plan.throughput_precision,
        measures="CudaEngine.embed on decoded uint8 crops: host staging, upload, normalisation, encoder, CLS download",
        runs=[],
    )
    for batch in plan.batches:
        for graphs in (False, True):
            run: Result = {"batch": batch, "cuda_graphs": graphs}
            result["runs"].append(run)
            try:
                run.update(time_engine(bundle, prepared.crops, plan, batch, graphs))
            except Exception as exc:  # noqa: BLE001 - one configuration failing (OOM, say) leaves the others
                run["error"] = f"{type(exc).__name__}: {exc}"
            save()
    if all("error" in run for run in result["runs"]):
        raise RuntimeError("every configuration failed: " + result["runs"][0]["error"])


# ------------------------------------------------------------------------------------ end to end


def _bases(count: int = 8) -> list[np.ndarray]:
    """Smooth random pictures, the same in every writer process (fixed seed)."""
    from PIL import Image

    rng = np.random.default_rng(12345)
    small = [rng.integers(0, 256, (SIDE // 16, SIDE // 16, 3), dtype=np.uint8) for _ in range(count)]
    return [np.asarray(Image.fromarray(s).resize((SIDE, SIDE), Image.BICUBIC), dtype=np.int16) for s in small]


def write_images(job: tuple[Path, int, int]) -> int:
    """Files lo..hi-1: a base shifted and noised per file, so every file's bytes and crop differ
    (identical contents would be embedded once and flatter the rate)."""
    from PIL import Image

    dest, lo, hi = job
    bases = _bases()
    written = 0
    for i in range(lo, hi):
        rng = np.random.default_rng(i)
        shifted = np.roll(bases[i % len(bases)], tuple(rng.integers(0, SIDE, 2)), axis=(0, 1))
        noisy = np.clip(shifted + rng.integers(-8, 9, shifted.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        path = dest / f"{i:06d}.jpg"
        Image.fromarray(noisy).save(path, "JPEG", quality=90)
        written += path.stat().st_size
    return written


def generate(dest: Path, count: int, workers: int) -> int:
    """`count` distinct 512x512 JPEGs written in parallel; returns their total size in bytes.

    Spawned writers: this process may hold a CUDA context, which a forked child must not inherit.
    """
    dest.mkdir(parents=True)
    step = max(1, -(-count // (workers * 4)))
    jobs = [(dest, lo, min(lo + step, count)) for lo in range(0, count, step)]
    with mp.get_context("spawn").Pool(workers) as pool:
        return sum(pool.map(write_images, jobs))


class Sampler:
    """Peaks while the scan runs: GPU memory in use (nvidia-smi, since the scan is another process)
    and the PSS of the scan's process tree (its decode workers included; PSS splits shared pages)."""

    def __init__(self, pid: int, gpu: bool, interval: float = 0.2) -> None:
        self.pid, self.gpu, self.interval = pid, gpu, interval
        self.gpu_peak_mib: float | None = None
        self.pss_peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mib() if self.gpu else None
            if used is not None:
                self.gpu_peak_mib = max(self.gpu_peak_mib or 0.0, used)
            self.pss_peak_mib = max(self.pss_peak_mib, tree_pss_mib(self.pid))
            self._stop.wait(self.interval)


def gpu_memory_used_mib() -> float | None:
    out = nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits")
    return float(out.splitlines()[0]) if out else None


def tree_pss_mib(root: int) -> float:
    """Sum of Pss over `root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total_kib, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        total_kib += int(found.group(1)) if found else 0
    return total_kib / 1024


def scan_command(folder: Path, output: Path, plan: Plan) -> list[str]:
    engine, precision = plan.scan_engine
    return [sys.executable, *CLI, "scan", str(folder), "--engine", engine, "--precision", precision, "--no-cache", "-q",
            "-o", str(output), "--workers", str(plan.workers)]  # fmt: skip


def read_jsonl(path: Path) -> tuple[Result, Result]:
    """The scan's header (engine, device, precision actually used) and its closing summary."""
    lines = path.read_text().splitlines()
    header, summary = json.loads(lines[0]), json.loads(lines[-1])
    keep = ("engine", "device", "precision", "weights")
    return {k: header.get(k) for k in keep}, summary


def end_to_end(result: Result, save: Save, plan: Plan, folder: Path) -> None:
    load_checked_bundle(load_prepared(folder))
    release()  # this process's cached GPU memory would otherwise count in the scan's baseline
    with tempfile.TemporaryDirectory(prefix="gpucheck-e2e-") as tmp:
        images = Path(tmp) / "images"
        started = time.perf_counter()
        total = generate(images, plan.count, plan.workers)
        result.update(files=plan.count, size=f"{SIDE}x{SIDE} JPEG q90", mean_file_kib=round(total / plan.count / 1024, 1),
                      generate_s=round(time.perf_counter() - started, 2))  # fmt: skip
        save()
        output = Path(tmp) / "scan.jsonl"
        command = scan_command(images, output, plan)
        result["command"] = "codescan " + " ".join(command[len(CLI) + 1 :])
        baseline = gpu_memory_used_mib() if plan.device == "cuda" else None
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with Sampler(proc.pid, plan.device == "cuda") as sampler:
            try:
                _, stderr = proc.communicate(timeout=SCAN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                lines = output.read_text().splitlines() if output.exists() else []
                done = max(0, len(lines) - 1)  # JSONL: a header, then one line per file
                result.update(files_done=done, files_per_s_until_killed=round(done / SCAN_TIMEOUT_S, 1))
                raise RuntimeError(f"scan killed after {SCAN_TIMEOUT_S} s, {done} of {plan.count} files done") from None
        wall = time.perf_counter() - started
        result.update(
            returncode=proc.returncode,
            wall_s=round(wall, 2),
            files_per_s=round(plan.count / wall, 1),
            gpu_memory_baseline_mib=baseline,
            gpu_memory_peak_mib=sampler.gpu_peak_mib,
            gpu_memory_scan_mib=None if baseline is None or sampler.gpu_peak_mib is None else sampler.gpu_peak_mib - baseline,
            host_pss_peak_mib=round(sampler.pss_peak_mib, 1),
            largest_child_maxrss_mib=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        )
        if proc.returncode not in (0, 1):  # 1 only says some file was judged fake
            result["stderr"] = _tail(stderr)
            raise RuntimeError(f"scan exited {proc.returncode}")
        result["scan_header"], result["scan_summary"] = read_jsonl(output)
    summary = result["scan_summary"]
    # The CLI's own timer runs from after the model is loaded (imports, CUDA init excluded) to the
    # last record; the first batch's CUDA graph capture is inside it.
    result["files_per_s_after_model_load"] = round(plan.count / summary["seconds"], 1) if summary.get("seconds") else None
    if summary.get("files") != plan.count or summary.get("errors"):
        files, errors = summary.get("files"), summary.get("errors")
        raise RuntimeError(f"scan reported {files} files and {errors} errors, not {plan.count} and 0")


# ------------------------------------------------------------------------------------ training


def training_folder(prepared: Prepared, dest: Path) -> Path:
    """The carried crops as `codescan train` reads data: real/*.png and fake/<generator>/*.png."""
    from PIL import Image

    for i, (crop, fake, generator) in enumerate(zip(prepared.crops, prepared.fake, prepared.generators)):
        folder = dest / "fake" / str(generator) if fake else dest / "real"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"{i:04d}.png", compress_level=1)
    return dest


def train_smoke(result: Result, save: Save, plan: Plan, folder: Path) -> str | None:
    """`codescan train` on this device from the carried bundle: AMP, a checkpoint after the first
    epoch, a resumed run that finishes, the compile step (TensorRT where it imports), then the gate
    of the trained bundle at the reduced precision. Training speed on a few hundred crops is no
    benchmark; the step shows the GPU path works end to end."""
    import importlib.util

    missing = [m for m in ("timm", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        return f"codescan train needs {', '.join(missing)}, not installed on this machine"
    import torch
    from codescan.engines.gate import run_gate
    from codescan.engines.registry import installed
    from codescan.train.config import TrainConfig
    from codescan.train.loop import EpochEvent
    from codescan.train.optim import amp_for
    from codescan.train.run import train_bundle

    prepared = load_prepared(folder)
    load_checked_bundle(prepared)
    with tempfile.TemporaryDirectory(prefix="gpucheck-train-") as tmp:
        data = training_folder(prepared, Path(tmp) / "data")
        config = TrainConfig(
            data=str(data), out="gpucheck-train", init=BUNDLE, epochs=2, batch_size=plan.train_batch,
            steps_per_epoch=plan.train_steps // 2, device=plan.device, val_fraction=0.25,
        )  # fmt: skip
        result.update(images=len(prepared.crops), steps=plan.train_steps, batch=plan.train_batch, init=BUNDLE,
                      amp=amp_for(torch.device(plan.device)))  # fmt: skip

        class Stop(Exception):
            pass

        def stop_after_first_epoch(event: object) -> None:
            if isinstance(event, EpochEvent) and event.epoch == 1:
                raise Stop

        started = time.perf_counter()
        try:
            train_bundle(config, on_event=stop_after_first_epoch)
            raise RuntimeError("the first run was to stop after its first epoch, and did not")
        except Stop:
            result["first_run_s"] = round(time.perf_counter() - started, 2)
        save()
        said: list[str] = []
        started = time.perf_counter()
        trained = train_bundle(config, resume=True, on_event=lambda event: said.append(getattr(event, "text", "")))
        result.update(
            resumed_run_s=round(time.perf_counter() - started, 2),
            img_s=round(trained.img_s, 1),
            bundle_digest=trained.bundle.digest,
            compile=[line for line in said if "TensorRT" in line] or None,
            validation={n: v.to_dict() for n, v in trained.validation.items()},
        )
        save()
    candidates = [(e, p) for e, p in plan.train_gate if installed(e)]
    gates = run_gate(trained.bundle, prepared.crops[: plan.parity_crops], candidates)
    result["gate"] = [{k: getattr(g, k) for k in ("engine", "precision", "images", "cosine_min", "agreement", "passed")} for g in gates]
    return None


# ------------------------------------------------------------------------------------ summary


def _fmt_parity(r: Result) -> str:
    parts = []
    for p in ("fp16", "fp32"):
        if p in r:
            m = r[p]
            agree = " ".join(f"{h} {v['agreement']:.2%}" for h, v in m["heads"].items())
            parts.append(f"{p}: cos min {m['cosine_min']:.6f} mean {m['cosine_mean']:.6f}, {agree} -> {m['gate'].upper()}")
    return f"{r.get('images')} crops; " + "; ".join(parts)


def _fmt_throughput(r: Result) -> str:
    parts = []
    for run in r.get("runs", []):
        label = f"b{run['batch']} {'graphs' if run['cuda_graphs'] else 'eager'}"
        rate = run["error"] if "error" in run else f"{run['images_per_s_best']:.0f}/{run['images_per_s_median']:.0f}"
        parts.append(f"{label} {rate}")
    return f"{r.get('precision')} img/s best/median: " + ", ".join(parts)


def _fmt_e2e(r: Result) -> str:
    if "files_per_s" not in r:
        return f"{r.get('files', '?')} files generated"
    gpu = f", GPU memory +{r['gpu_memory_scan_mib']:.0f} MiB" if r.get("gpu_memory_scan_mib") is not None else ""
    return (f"{r['files']} files in {r['wall_s']} s = {r['files_per_s']} files/s ({r.get('files_per_s_after_model_load')} "
            f"after model load){gpu}, host PSS peak {r['host_pss_peak_mib']:.0f} MiB")  # fmt: skip


def _fmt_train(r: Result) -> str:
    gates = "; ".join(f"{g['engine']} {g['precision']} {'passed' if g['passed'] else 'failed'} (cos min {g['cosine_min']:.5f})"
                      for g in r.get("gate", [])) or "no candidate installed"  # fmt: skip
    return (f"{r['steps']} steps of {r['batch']} from {r['init']}, AMP {r['amp']}: stopped after epoch 1 in {r['first_run_s']} s, "
            f"resumed to the end in {r['resumed_run_s']} s ({r['img_s']} img/s); {'; '.join(r.get('compile') or [])}; gate: {gates}")


def _fmt_environment(r: Result) -> str:
    torch = r.get("packages", {}).get("torch")
    return (f"{r.get('gpu', 'no GPU')}, CUDA {r.get('torch_cuda')} (driver API {r.get('cuda_driver_api')}), torch {torch}, "
            f"{r.get('cpus_usable')} CPUs; tensorrt {r.get('tensorrt')}")  # fmt: skip


def _fmt_install(r: Result) -> str:
    return f"{r.get('method')}; {r.get('jpeg_extension')}"


FORMATS: dict[str, Callable[[Result], str]] = {
    "install": _fmt_install,
    "environment": _fmt_environment,
    "parity": _fmt_parity,
    "throughput": _fmt_throughput,
    "end_to_end": _fmt_e2e,
    "train": _fmt_train,
}


def summary_lines(doc: dict[str, Any]) -> list[str]:
    title = "codescan GPU check" + (" (DRY RUN on CPU: numbers mean nothing)" if doc["dry_run"] else "")
    lines = [title, f"weights: {doc['weights']}"]
    for name, entry in doc["steps"].items():
        try:
            measured = FORMATS[name](entry["result"]) if entry["result"] else ""
        except (KeyError, TypeError, ValueError):  # a step cut short mid-way: the JSON has what there is
            measured = "partial results, see the JSON"
        status, detail = entry["status"], measured
        if status == "skipped":
            detail = entry.get("reason", "")
        elif status == "failed":
            detail = f"{entry.get('error')} | {measured}"
        lines.append(f"{name:<12} {status:<8} {detail}")
    return lines


# ------------------------------------------------------------------------------------ main


def working_home(prepared: Path, scratch: Path) -> Path:
    """A private copy of the carried CODESCAN_HOME: engines may store derived files (an exported
    ONNX graph, say) beside a bundle, and the carried folder must stay as prepared, under the carry limit."""
    home = scratch / "home"
    if (prepared / "home").is_dir():
        shutil.copytree(prepared / "home", home)
    return home


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny sizes: tests the script")
    ap.add_argument("--count", type=int, help="files for the end-to-end scan (default 10000; 64 with --dry-run)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or Path(tempfile.gettempdir()) / "gpu_check"))
    ap.add_argument("--prepared", type=Path, default=REPO / ".gpucheck", help="the folder gpu_prepare.py built")
    ap.add_argument("--install-dir", type=Path, default=Path(tempfile.gettempdir()) / "codescan-gpucheck")
    args = ap.parse_args(argv)
    plan = make_plan(args.dry_run, args.count)
    prepared = args.prepared.resolve()
    try:
        weights = json.loads((prepared / "prepared.json").read_text())["weights"]
    except (OSError, ValueError, KeyError) as exc:
        weights = f"unknown: {prepared}/prepared.json unreadable ({exc}); run benchmarks/gpu_prepare.py and carry the folder"
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"dry_run": plan.dry_run, "plan": asdict(plan), "prepared": str(prepared), "weights": weights}
    report = Report(args.out / "gpu_check.json", meta)
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as scratch:
        os.environ.update(CODESCAN_HOME=str(working_home(prepared, Path(scratch))), HF_HUB_OFFLINE="1", CODESCAN_OFFLINE="1")
        report.run("install", lambda r, s: install(r, prepared, args.install_dir.resolve()))
        report.run("environment", lambda r, s: environment(r, plan))
        report.run("parity", lambda r, s: parity(r, s, plan, prepared))
        report.run("throughput", lambda r, s: throughput(r, s, plan, prepared))
        report.run("end_to_end", lambda r, s: end_to_end(r, s, plan, prepared))
        report.run("train", lambda r, s: train_smoke(r, s, plan, prepared))
    report.finish()
    print("\n".join(summary_lines(report.doc)), flush=True)
    print(f"report: {report.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
