"""Hostile head pickles (security kit F0, F1, F7, F9 and variants of each class), and a mutation fuzz.

Each attack is refused by the restricted unpickler in-process, and by `codescan weights
import` with exactly one line on stderr, exit 2, nothing installed, no marker file, no signal
death and a bounded peak memory. The kit's own files are rebuilt here from their description
(tests/pickle_asm.py), so the suite needs no ../shared.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import pickle
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from pickle_asm import Asm

from codescan.model.sklearn_heads import UnsafePickleError, estimator_to_head
from codescan.weights.unpickle import HeadLimits, restricted_load

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_sklearn13"
CODESCAN = str(Path(sys.executable).parent / "codescan")
LINEAR = "linear_tot_classifier_epoch-32.sav"
ESTIMATORS = [
    ("sklearn.linear_model._logistic", "LogisticRegression"),
    ("sklearn.neighbors._classification", "KNeighborsClassifier"),
    ("sklearn.svm._classes", "OneClassSVM"),
]
ESC = "\x1b]0;owned-title\x07\x1b[2J\x1b[1;31mFAKE: all heads verified OK\x1b[0m"


def _wrapper_state(a: Asm, shape: tuple[int, ...], dtype: callable) -> Asm:
    """The dict joblib pickles for its NumpyArrayWrapper; `dtype` emits the dtype value."""
    a.empty_dict().mark()
    a.str_("subclass").glob("numpy", "ndarray")
    a.str_("shape").mark()
    for d in shape:
        a.int_(d)
    a.tup()
    a.str_("order").str_("C").str_("dtype")
    dtype(a)
    a.str_("allow_mmap").false()
    return a.setitems()


def class_swap(cmd: str, estimator=ESTIMATORS[0], dtype_class: str = "Float64DType", target: str = "NumpyArrayWrapper") -> bytes:
    """F0: an allowed placeholder BUILT with slot state {"__class__": <wrapper>}, then a nested pickle."""
    a = Asm().estimator(*estimator)
    _wrapper_state(a, (1,), lambda q: q.glob("numpy.dtypes", dtype_class) if dtype_class else q.dtype("O8"))
    a.empty_dict().str_("__class__").glob("joblib.numpy_pickle", target).setitem()
    a.tup2().build()
    a.raw(Asm().glob("os", "system").str_(cmd).tup1().reduce().done())
    return a.done()


def wrapper_with_object_dtype(cmd: str) -> bytes:
    """The same nested pickle behind a genuine wrapper whose dtype is object."""
    a = Asm().glob("joblib.numpy_pickle", "NumpyArrayWrapper").empty_tup().newobj()
    _wrapper_state(a, (1,), lambda q: q.dtype("O8")).build()
    a.raw(Asm().glob("os", "system").str_(cmd).tup1().reduce().done())
    return a.done()


def itemsize_rebuild(spec: str = "S8", big: int = 1 << 24, raw: bytes = b"1.000000" * 2) -> bytes:
    """F1: a memoised flexible dtype used by coef_, then BUILT again with a huge itemsize."""
    a = Asm().dtype(spec).put(0).pop()
    a.estimator().empty_dict().mark()
    a.str_("classes_").array((2,), "<i8", np.array([0, 1], "<i8").tobytes())
    a.str_("coef_")
    a.glob("numpy.core.multiarray", "_reconstruct").glob("numpy", "ndarray").int_(0).tup1().bytes_(b"b").tup3().reduce()
    a.mark().int_(1).mark().int_(1).int_(2).tup().get(0).false().bytes_(raw).tup().build()
    a.str_("intercept_").array((1,), "<f8", np.array([0.5]).tobytes())
    a.setitems().build()
    a.get(0).mark().int_(3).str_("|").none().none().none().int_(big).int_(1).int_(0).tup().build().pop()
    return a.done()


def wrapper_declaring(count: int, dtype: str = "<f8") -> bytes:
    """A LogisticRegression whose coef_ is a joblib wrapper declaring `count` items (data follows)."""
    a = Asm().estimator().empty_dict().str_("coef_")
    a.glob("joblib.numpy_pickle", "NumpyArrayWrapper").empty_tup().newobj()
    _wrapper_state(a, (1, count), lambda q: q.dtype(dtype)).build()
    return bytes(a.b)


def bomb(codec: str, gib: float) -> bytes:
    """F9 in every joblib compression: a head whose array inflates to `gib` GiB of zeros.

    xz as the kit builds it (identical 16 MiB zero streams, joined); the others as one stream of
    a head that declares the size, with only the first MiB of its data present (the size alone
    must be refused: nothing may be allocated for it).
    """
    count = int(gib * (1 << 30)) // 8
    head = wrapper_declaring(count)
    tail = bytes(Asm(proto=0).setitem().build().done())
    if codec == "xz":
        xz = lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=1)  # noqa: E731
        zero, chunk = xz(bytes(1 << 24)), 1 << 24
        return xz(head) + zero * (count * 8 // chunk) + xz(tail)
    payload = head + bytes(1 << 20)
    return {
        "zlib": lambda: zlib.compress(payload),
        "gzip": lambda: gzip.compress(payload),
        "bz2": lambda: bz2.compress(payload),
        "lzma": lambda: lzma.compress(payload, format=lzma.FORMAT_ALONE),
    }[codec]()


def opcode_flood(n: int = 1_200_000) -> bytes:
    a = Asm().empty_list()
    a.raw((pickle.EMPTY_DICT + pickle.APPEND) * n)
    return a.done()


@pytest.fixture()
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


def _refused_in_process(tmp_path: Path, data: bytes, match: str = "refused") -> None:
    path = tmp_path / LINEAR
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match=match):
        estimator_to_head(restricted_load(path))


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e[1])
@pytest.mark.parametrize("dtype_class", ["Float64DType", "Int8DType", "BytesDType", ""])
@pytest.mark.parametrize("target", ["NumpyArrayWrapper", "NDArrayWrapper"])
def test_class_swap_is_refused(tmp_path, marker, estimator, dtype_class, target):
    _refused_in_process(tmp_path, class_swap(f"touch {marker}", estimator, dtype_class, target))
    assert not marker.exists()


def test_class_swap_payload_is_live(tmp_path, marker):
    """Sanity: the nested stream is a working payload for plain pickle (in a child)."""
    data = class_swap(f"touch {marker}")
    inner = data[data.index(b"\x80\x02cos") :]
    subprocess.run([sys.executable, "-P", "-c", f"import pickle; pickle.loads({inner!r})"], check=True)
    assert marker.exists()


def test_object_wrapper_is_refused(tmp_path, marker):
    _refused_in_process(tmp_path, wrapper_with_object_dtype(f"touch {marker}"), match="dtype O8")
    assert not marker.exists()


@pytest.mark.parametrize("spec,raw", [("S8", b"1.000000" * 2), ("U2", "1.".encode("utf-32-le") * 2)])
@pytest.mark.parametrize("big", [1 << 24, 1, 0])
def test_dtype_rebuilt_after_use_is_refused(tmp_path, spec, raw, big):
    _refused_in_process(tmp_path, itemsize_rebuild(spec, big, raw), match="second BUILD")


@pytest.mark.parametrize(
    "state",
    [
        (3, "|", None, None, None, 1 << 24, 1, 0),  # itemsize rewritten before any use
        (3, "<", None, None, None, -1, -1, 63),  # flags: "holds objects"
        (3, "|", None, None, None, 8, 1, 0),  # an itemsize a numeric type cannot have
        (4, "<", None, None, None, -1, -1, 0, "meta"),  # metadata
        (3, "!", None, None, None, -1, -1, 0),  # a byte order numpy never writes
    ],
)
def test_forged_dtype_state_is_refused(tmp_path, state):
    data = Asm().estimator().empty_dict().str_("coef_").dtype("f8" if state[5] != 1 << 24 else "S8", state).setitem()
    _refused_in_process(tmp_path, data.build().done())


def test_estimator_state_rules(tmp_path):
    non_str = Asm().estimator().empty_dict().int_(1).int_(2).setitem().build().done()
    _refused_in_process(tmp_path, non_str, match="plain string keys")
    slot = Asm().estimator().empty_dict().empty_dict().tup2().build().done()
    _refused_in_process(tmp_path, slot, match="plain string keys")
    twice = Asm().estimator().put(0).empty_dict().build().pop().get(0).empty_dict().build().done()
    _refused_in_process(tmp_path, twice, match="second BUILD")
    wrapper_args = Asm().glob("joblib.numpy_pickle", "NumpyArrayWrapper").str_("x").tup1().newobj().done()
    _refused_in_process(tmp_path, wrapper_args, match="creating")
    call_placeholder = Asm().glob(*ESTIMATORS[0]).empty_tup().reduce().done()
    _refused_in_process(tmp_path, call_placeholder, match="a call of")


def test_limits(tmp_path):
    _refused_in_process(tmp_path, opcode_flood(), match="opcodes")
    huge_str = bytes(Asm().b) + pickle.BINUNICODE8 + (1 << 40).to_bytes(8, "little")
    _refused_in_process(tmp_path, huge_str, match="inflate past its limit")
    _refused_in_process(tmp_path, b"\x04\x22\x4d\x18" + bytes(64), match="lz4")
    small = HeadLimits(max_array_bytes=1000)
    path = tmp_path / LINEAR
    path.write_bytes(zlib.compress(wrapper_declaring(200)))
    with pytest.raises(UnsafePickleError, match="CODESCAN_HEAD_MAX_ARRAY_BYTES"):
        restricted_load(path, small)


def test_limits_from_environment():
    assert HeadLimits.from_env({"CODESCAN_HEAD_MAX_RATIO": "1000"}).max_ratio == 1000
    with pytest.raises(ValueError, match="CODESCAN_HEAD_MAX_BYTES"):
        HeadLimits.from_env({"CODESCAN_HEAD_MAX_BYTES": "lots"})


@pytest.mark.parametrize("codec", ["zlib", "gzip", "bz2", "xz", "lzma"])
def test_bombs_are_refused_before_allocation(tmp_path, codec):
    _refused_in_process(tmp_path, bomb(codec, 1.0 if codec == "xz" else 1.5), match="inflate past its limit")


def test_truncated_compressed_head_is_unreadable(tmp_path):
    path = tmp_path / LINEAR
    path.write_bytes(gzip.compress((FIXTURES / LINEAR).read_bytes())[:200])
    with pytest.raises(ValueError, match="truncated|not a readable"):
        restricted_load(path)


def test_the_reader_never_imports_joblib_or_sklearn():
    """joblib's version cannot matter: no joblib (or scikit-learn) code runs while heads are read."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from codescan.model.sklearn_heads import estimator_to_head
        from codescan.weights.unpickle import restricted_load
        for p in sorted(Path({str(FIXTURES)!r}).glob("*.*")):
            if p.suffix in (".sav", ".joblib"):
                estimator_to_head(restricted_load(p))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("joblib", "sklearn")))
        """
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------- CLI


def _official_with(tmp_path: Path, encoder: Path, data: bytes) -> Path:
    folder = tmp_path / "CoDE"
    (folder / "sklearn").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        os.link(encoder / f, folder / f)
    (folder / "sklearn" / LINEAR).write_bytes(data)
    return folder


def _import_measured(folder: Path, home: Path) -> tuple[subprocess.CompletedProcess, int]:
    """`codescan weights import` under a wrapper that reports the largest RSS of any process in it (KiB)."""
    wrapper = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True);"
        "sys.stdout.buffer.write(p.stderr); print('\\nRC', p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    env = {**os.environ, "CODESCAN_HOME": str(home), "NO_COLOR": "1"}
    env.pop("CODESCAN_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-P", "-c", wrapper, CODESCAN, "weights", "import", str(folder)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    body, _, tail = p.stdout.rpartition("\nRC ")
    rc, rss = tail.split()
    return subprocess.CompletedProcess(p.args, int(rc), "", body), int(rss)


@pytest.mark.parametrize("attack", ["F0-class-swap", "F1-itemsize", "F7-escape", "F9-xz-bomb", "gzip-bomb"])
def test_cli_refuses_with_one_line(tmp_path, encoder_files, marker, attack):
    data = {
        "F0-class-swap": lambda: class_swap(f"touch {marker}"),
        "F1-itemsize": itemsize_rebuild,
        "F7-escape": lambda: Asm().glob(ESC, "x").done(),
        "F9-xz-bomb": lambda: bomb("xz", 4.0),
        "gzip-bomb": lambda: bomb("gzip", 1.5),
    }[attack]()
    home = tmp_path / "home"
    p, rss_kib = _import_measured(_official_with(tmp_path, encoder_files, data), home)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("codescan: error: ") and "refused" in lines[0], p.stderr
    assert "\x1b" not in p.stderr
    assert not marker.exists()
    assert not (home / "weights" / "code").exists()
    assert rss_kib < 500_000, f"a process of the import peaked at {rss_kib} KiB"


def test_cli_reports_a_crashing_reader_in_one_line(tmp_path, encoder_files, monkeypatch):
    """A signal death of the reader (simulated: the child kills itself) is a refusal, not a crash."""
    import codescan.weights.headconvert as hc

    folder = _official_with(tmp_path, encoder_files, (FIXTURES / LINEAR).read_bytes())
    monkeypatch.setattr(hc.sys, "executable", "/bin/sh")
    monkeypatch.setattr(hc, "_child_env", lambda: {"PATH": os.environ["PATH"]})
    real_run = subprocess.run

    def run(cmd, **kw):
        return real_run(["/bin/sh", "-c", "kill -SEGV $$"], **kw)

    monkeypatch.setattr(hc.subprocess, "run", run)
    with pytest.raises(hc.HeadConversionError, match="died with SIGSEGV"):
        hc.convert_isolated(sorted(folder.glob("sklearn/*")))


# --------------------------------------------------------------------------------------- fuzz

FUZZ_CHILD = textwrap.dedent(
    """
    import json, os, random, resource, sys, zlib, gzip, bz2, lzma
    from pathlib import Path
    from codescan.model.sklearn_heads import estimator_to_head
    from codescan.weights.unpickle import UnsafePickleError, restricted_load
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    seeds = [Path(p).read_bytes() for p in sys.argv[3:]]
    rng = random.Random(int(sys.argv[2]))
    work = Path(sys.argv[1])
    counts = {"ok": 0, "refused": 0, "unreadable": 0}
    def mutate(b):
        b = bytearray(b)
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            op = rng.random()
            i = rng.randrange(len(b) or 1)
            if op < 0.45 and b:
                b[i] = rng.randrange(256)
            elif op < 0.6:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
            elif op < 0.75 and b:
                del b[i : i + rng.randrange(1, 9)]
            elif op < 0.85:
                j = rng.randrange(len(b) or 1); b[i:i] = b[j : j + rng.randrange(1, 64)]
            elif op < 0.9:
                b[i : i + 8] = rng.choice([b"\\xff" * 8, (1 << 62).to_bytes(8, "little"), bytes(8)])
            else:
                b = b[: rng.randrange(len(b) + 1)]
        b = bytes(b)
        r = rng.random()
        if r < 0.05: b = zlib.compress(b)
        elif r < 0.1: b = lzma.compress(b)
        return b
    for n in range(int(os.environ["FUZZ_N"])):
        path = work / f"m{n % 8}.sav"
        path.write_bytes(mutate(rng.choice(seeds)))
        try:
            estimator_to_head(restricted_load(path))
            counts["ok"] += 1
        except UnsafePickleError:
            counts["refused"] += 1
        except ValueError:
            counts["unreadable"] += 1
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (pytest, GBs)
    status = Path("/proc/self/status").read_text()
    counts["max_rss_kib"] = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps(counts))
    """
)


def _fuzz_seeds(tmp_path: Path, marker: Path) -> list[Path]:
    import joblib
    from sklearn.linear_model import LogisticRegression

    seeds = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".sav", ".joblib"))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 8)), np.arange(30) % 2
    est = LogisticRegression().fit(x, y)
    extra = {
        "proto2.sav": pickle.dumps(est, protocol=2),
        "proto5.sav": pickle.dumps(est, protocol=5),
        "swap.sav": class_swap(f"touch {marker}"),
        "itemsize.sav": itemsize_rebuild(),
        "objwrap.sav": wrapper_with_object_dtype(f"touch {marker}"),
    }
    for name, data in extra.items():
        (tmp_path / name).write_bytes(data)
        seeds.append(tmp_path / name)
    joblib.dump(est, tmp_path / "xz.sav", compress=("xz", 1))
    return [*seeds, tmp_path / "xz.sav"]


def test_fuzz_head_unpickler(tmp_path, marker):
    """Mutated real and hostile heads: every outcome a head or a typed refusal; no crash, no code run.

    FUZZ_N mutants (default 3000, about 15 s here) run in one child with a 3 GiB address-space
    cap; a crash fails the test with the seed to replay it. A longer run: CODESCAN_FUZZ_HEADS=200000.
    """
    n = int(os.environ.get("CODESCAN_FUZZ_HEADS", "3000"))
    seed = int(os.environ.get("CODESCAN_FUZZ_SEED", "20261126"))
    work = tmp_path / "work"
    work.mkdir()
    seeds = _fuzz_seeds(tmp_path, marker)
    p = subprocess.run(
        [sys.executable, "-P", "-c", FUZZ_CHILD, str(work), str(seed), *map(str, seeds)],
        env={**os.environ, "FUZZ_N": str(n)}, capture_output=True, text=True, timeout=3000,
    )
    assert p.returncode == 0, f"fuzz child died (rc {p.returncode}, seed {seed}): {p.stderr[-2000:]}"
    counts = json.loads(p.stdout)
    assert counts["ok"] + counts["refused"] + counts["unreadable"] == n
    assert counts["ok"] > 0 and counts["refused"] > 0 and counts["unreadable"] > 0, counts
    assert counts["max_rss_kib"] < 1_000_000, counts
    assert not marker.exists()
