"""`codescan scan --ray`: a private local Ray instance (2 CPUs) gives the local scan's records,
for local paths and file:// URIs, with hostile files, under --resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import LABELED, run_cli, textured_image

pytest.importorskip("ray", reason="the ray extra is part of the test install")

RAY = ("--ray", "local", "--ray-workers", "2")


def lines(stdout: bytes) -> list[dict]:
    out = [json.loads(x) for x in stdout.decode().splitlines()]
    assert out[-1].pop("seconds") >= 0
    return out


def test_labeled_corpus_and_archives_same_records_as_local_scan(home, labeled, tmp_path):
    """Archive members travel as entries (offsets, or bytes for streamed sources) and come back
    with their origin; duplicate names stay apart."""
    from archive_kit import parquet_images, tar_of, tiny_jpeg, tiny_png, zip_of

    shard = tar_of(tmp_path / "s.tar", [("dup.jpg", tiny_jpeg(1)), ("dup.jpg", tiny_jpeg(2)), ("n.zip", b"PK"), ("c.png", tiny_png(3))])
    packed = zip_of(tmp_path / "z.zip", [("a.jpg", tiny_jpeg(4)), ("b.jpg", b"not an image")])
    gz = tar_of(tmp_path / "g.tgz", [("x.jpg", tiny_jpeg(5))], "w:gz")
    rows = parquet_images(tmp_path / "r.parquet", [tiny_jpeg(i) for i in range(5)], ids=list("abcde"), row_group_size=2)
    args = ("scan", str(LABELED), str(shard), str(packed), str(gz), str(rows), "-q", "--head", "all", "--id-column", "id")
    local = run_cli(*args, "--no-cache")
    ray = run_cli(*args, *RAY)
    assert ray.returncode == local.returncode == 2, ray.stderr.decode()[-3000:]  # 2: b.jpg is not an image
    expected, got = lines(local.stdout), lines(ray.stdout)
    assert len(got) == 2 + sum(1 for p in LABELED.rglob("*") if p.is_file()) + 4 + 2 + 1 + 5
    assert got == expected
    members = [r for r in got if r.get("archive") == str(shard)]
    assert [r["member_index"] for r in members] == [0, 1, 2, 3] and members[2]["error_code"] == "nested_archive"
    assert [r["key"] for r in got if r.get("archive") == str(rows)] == list("abcde")


@pytest.fixture()
def mixed_tree(tmp_path):
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(3)
    textured_image(rng, 260, 230).save(root / "a" / "b.png")
    textured_image(rng, 300, 200).save(root / "a.png")  # after a/b.png in walk order
    textured_image(rng, 200, 240).save(root / "c.jpg", quality=90)
    (root / "d.png").write_bytes((root / "a.png").read_bytes()[:300])  # truncated
    (root / "e.txt").write_text("notes")
    (root / "stall_f.png").write_bytes((root / "a.png").read_bytes())
    return root


def test_uri_listing_resume_and_a_stalled_decoder(home, mixed_tree, tmp_path):
    env = {"CODESCAN_TEST_STALL_MARKER": "stall_"}
    local = run_cli("scan", str(mixed_tree), "-q", "--no-cache", "--decode-timeout", "2", env=env)
    expected = lines(local.stdout)
    names = [r["path"].rsplit("/", 1)[-1] for r in expected[1:-1]]
    assert names == ["b.png", "a.png", "c.jpg", "d.png", "e.txt", "stall_f.png"]
    assert expected[-2]["error_code"] == "decode_timeout"  # the decoder that never returns was killed

    uri = f"file://{mixed_tree}"
    ray = run_cli("scan", uri, "-q", "--decode-timeout", "2", *RAY, env=env)
    got = lines(ray.stdout)
    assert ray.returncode == local.returncode == 2, ray.stderr.decode()[-3000:]
    assert [r["path"] for r in got[1:-1]] == [uri + r["path"][len(str(mixed_tree)) :] for r in expected[1:-1]]
    for r in expected[1:-1] + got[1:-1]:
        r.pop("path")
    assert got[0].pop("inputs") != expected[0].pop("inputs")  # a fingerprint of the arguments: URI, path
    assert got == expected  # same records, paths aside: same order, verdicts, errors, evidence

    # A killed --ray scan resumes from its output file and ends with the uninterrupted records.
    out = tmp_path / "out.jsonl"
    first = run_cli("scan", str(mixed_tree), "-q", "--decode-timeout", "2", "-o", str(out), *RAY, env=env)
    assert first.returncode == 2
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:3]) + "\n" + full[3][:20])  # header, 2 results, a torn line
    again = run_cli("scan", str(mixed_tree), "-q", "--decode-timeout", "2", "--resume", str(out), *RAY, env=env)
    assert again.returncode == 2, again.stderr.decode()[-3000:]
    assert out.read_text().splitlines()[:-1] == full[:-1]


def test_shards_written_by_workers_and_continued(home, mixed_tree, tmp_path):
    from archive_kit import tar_of, tiny_jpeg

    env = {"CODESCAN_TEST_STALL_MARKER": "stall_"}
    shard = tar_of(tmp_path / "s.tar", [("dup.jpg", tiny_jpeg(i)) for i in range(3)] + [("x.txt", b"meta"), ("z.jpg", tiny_jpeg(7))])
    inputs = (str(mixed_tree), str(shard))
    local = lines(run_cli("scan", *inputs, "-q", "--no-cache", "--decode-timeout", "2", env=env).stdout)
    shards = tmp_path / "shards"
    args = ("scan", *inputs, "-q", "--decode-timeout", "2", "--batch-size", "2", "--shards", str(shards), *RAY)
    first = driver_without_engines(*args, env=env)  # the engine is resolved and built where it runs
    assert first.returncode == 2, first.stderr.decode()[-3000:]
    parts = sorted(shards.glob("part-*.jsonl"))
    assert len(parts) >= 3  # batches of 2: several shards, written by the embed actors
    records = [json.loads(x) for p in parts for x in p.read_text().splitlines()]
    assert records == local[1:-1]  # the shards in name order are the local scan's results
    assert json.loads((shards / "header.json").read_text()) == local[0]
    summary = json.loads((shards / "summary.json").read_text())
    assert summary.pop("seconds") >= 0 and summary == local[-1]

    # A job killed before some shards were written: rerunning writes only what is missing, and
    # an archive whose first members are recorded is asked for the others only.
    parts[1].unlink()
    last_member = next(p for p in parts[2:] if '"member_index": 4' in p.read_text())
    assert '"member_index": 0' not in last_member.read_text()  # batches of 2: members 0-1 are in another shard
    last_member.unlink()
    kept = {p: p.stat().st_ino for p in shards.glob("part-*.jsonl")}
    (shards / ".tmp.partial").write_text("torn")  # what an interrupted atomic write leaves
    again = run_cli(*args, env=env)
    assert again.returncode == 2, again.stderr.decode()[-3000:]
    assert [json.loads(x) for p in sorted(shards.glob("part-*.jsonl")) for x in p.read_text().splitlines()] == records
    assert {p: p.stat().st_ino for p in kept} == kept  # done files and members were not scanned again
    summary = json.loads((shards / "summary.json").read_text())
    assert summary.pop("seconds") >= 0 and summary == local[-1]

    p = run_cli("scan", *inputs, "-q", "--head", "knn", "--shards", str(shards), *RAY)
    assert p.returncode == 2 and b"different head" in p.stderr  # another question: refused, not mixed in


def driver_without_engines(*args: str, env: dict[str, str]):
    """`codescan ARGS` with engine building made impossible in the driver process only."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, codescan.engines.registry as r\n"
        "def refuse(*a, **k): raise SystemExit('the driver built an engine')\n"
        "r.build = r.create_engine = refuse\n"
        "from codescan.cli import main; sys.argv[0] = 'codescan'; main()"
    )
    return subprocess.run([sys.executable, "-P", "-c", code, *args], env={**os.environ, **env}, capture_output=True, timeout=600)


def test_typed_rows_make_the_local_records(tmp_path):
    """Ray's decode columns and score columns give back exactly the record the local scan makes."""
    from provenance_files import png

    from codescan.decoding.examine import ExamineConfig, Examined, Examiner
    from codescan.inputs.walk import Entry
    from codescan.scan.judge import Judge
    from codescan.scan.ray_rows import _decoded_row, record

    rng = np.random.default_rng(4)
    textured_image(rng, 250, 230).save(tmp_path / "plain.png")
    (tmp_path / "gen.png").write_bytes(png({"parameters": "a cat\nSteps: 20, Sampler: Euler a, Model: sd_xl_base_1.0"}))
    (tmp_path / "cut.png").write_bytes((tmp_path / "plain.png").read_bytes()[:200])
    (tmp_path / "notes.txt").write_text("text")
    examine = Examiner(ExamineConfig(evidence="metadata"))
    judge = Judge(judged=("linear", "knn"), thresholds={"linear": 0.0, "knn": 0.1}, show_all=True)
    for i, name in enumerate(["plain.png", "gen.png", "cut.png", "notes.txt"]):
        path = str(tmp_path / name)
        outcome = examine(Entry(path, path.encode()))
        scores = {"linear": 0.5 - i, "knn": 0.05 * i, "ocsvm": -1.0} if isinstance(outcome, Examined) else None
        row = {"seq": i, "display": path.encode(), **_decoded_row(outcome)}
        row.pop("crop", None)
        row |= {f"score_{k}": v for k, v in (scores or {}).items()}
        per_box = None if scores is None else (scores,)  # one box: the centre crop
        assert record(judge, row).to_dict() == judge.record(path, outcome, per_box).to_dict(), name
    gen = str(tmp_path / "gen.png")
    assert examine(Entry(gen, gen.encode())).evidence, "the evidence columns are exercised"


def test_missing_ray_extra_is_a_usage_error(home, tmp_path):
    import subprocess
    import sys

    (tmp_path / "x.png").write_bytes(b"")
    code = "import sys; sys.modules['ray'] = None; from codescan.cli import main; main()"
    p = subprocess.run([sys.executable, "-P", "-c", code, "scan", str(tmp_path), "--ray", "local"], capture_output=True)
    assert p.returncode == 2 and b"pip install 'codescan[ray]'" in p.stderr


# A driver that starts the private instance the way `scan --ray local` does, prints the GCS
# address and keeps the instance up until its stdin closes.
LOCAL_DRIVER = """
import sys
import ray
from codescan.scan.ray_executor import RayOptions, connect
connect(RayOptions("local"), num_cpus=1)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""
# A client of that GCS: reads its key list, or says why it could not.
GCS_CLIENT = """
import sys
from ray._raylet import GcsClient
try:
    keys = GcsClient(address=sys.argv[1]).internal_kv_keys(b"", None, timeout=20)
except Exception as exc:
    text = f"{type(exc).__name__}: {exc}"
    print(("refused " if "Authentication" in text or "Unauthenticated" in text else "error ") + text[:300])
else:
    print(f"open: {len(keys)} keys")
"""


def test_local_instance_refuses_a_client_without_its_token(tmp_path):
    """`--ray local` requires its own token even where the environment turns token authentication
    off or names another token."""
    import os
    import stat
    import subprocess
    import sys

    home, bare_home = tmp_path / "store", tmp_path / "bare"
    bare_home.mkdir()
    env = {**os.environ, "CODESCAN_HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "0" * 64}
    driver = subprocess.Popen(
        [sys.executable, "-P", "-c", LOCAL_DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=tmp_path
    )
    try:
        address = driver.stdout.readline().decode().strip()  # type: ignore[union-attr]
        assert address, "the local instance did not start"
        # A fresh process with no RAY_* variable and a HOME without ~/.ray/auth_token.
        bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(bare_home)}

        def client(extra: dict[str, str]) -> str:
            cmd = [sys.executable, "-P", "-c", GCS_CLIENT, address]
            run = subprocess.run(cmd, capture_output=True, env={**bare, **extra}, timeout=120)
            return run.stdout.decode().strip() or run.stderr.decode()[-300:]

        token = home / "ray" / "auth_token"
        without = client({})
        with_token = client({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    finally:
        driver.stdin.close()  # type: ignore[union-attr]
        driver.wait(timeout=120)
    assert without.startswith("refused"), without
    assert with_token.startswith("open"), with_token
    mode = token.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and stat.S_ISREG(mode) and len(token.read_text().strip()) >= 32


def test_the_token_file_stays_private_and_an_old_ray_is_refused(tmp_path):
    import stat

    from codescan.scan.ray_cluster import (
        PrivateInstanceError,
        auth_token,
        require_token_auth,
    )

    def mode(p) -> int:
        return stat.S_IMODE(p.lstat().st_mode)

    path = tmp_path / "store" / "ray" / "auth_token"
    first = auth_token(path).read_text()
    assert mode(path) == 0o600 and auth_token(path).read_text() == first  # created once, then kept
    path.chmod(0o644)
    assert auth_token(path).read_text() != first and mode(path) == 0o600  # was readable by others: a new one
    planted = tmp_path / "planted"
    planted.write_text("a" * 64)
    planted.chmod(0o600)
    path.unlink()
    path.symlink_to(planted)
    assert auth_token(path).read_text() != "a" * 64 and not path.is_symlink() and mode(path) == 0o600
    assert planted.read_text() == "a" * 64  # a link is replaced, never followed

    require_token_auth("2.52.0")
    require_token_auth("3.0.0.dev0")
    with pytest.raises(PrivateInstanceError, match=r"Ray >= 2\.52 .*Ray 2\.51\.1 is installed"):
        require_token_auth("2.51.1")


def test_engine_resolution_follows_the_cluster_not_the_driver(home, monkeypatch):
    """A CPU-only driver with GPUs in the cluster asks a GPU worker; without GPUs, CPU engines."""
    import ray
    from codescan.engines.protocol import EngineError
    from codescan.engines.registry import Resolved

    from codescan.scan import ray_executor as ray_scan
    from codescan.scan.plan import ScanConfig, ScanPlan
    from codescan.scan.ray_cluster import RayOptions
    from codescan.scan.ray_executor import resolve_engine

    auto = ScanPlan.resolve("code", "auto", "auto", ScanConfig(cache="c.sqlite3"), ray=RayOptions())
    cuda = ScanPlan.resolve("code", "cuda", "auto", ScanConfig(), ray=RayOptions())
    assert auto.config.cache is False  # one machine's cache: off under Ray, decided by the plan
    monkeypatch.setattr(ray_scan, "connect", lambda options, num_cpus=None: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    assert resolve_engine(auto, RayOptions()) == Resolved("onnxruntime", "fp32", "cpu")
    with pytest.raises(EngineError, match="needs a CUDA GPU"):
        resolve_engine(cuda, RayOptions())
    # A driver with a GPU of its own, in a cluster without one: an error, not actors waiting for a GPU.
    from codescan.engines import registry

    monkeypatch.setattr(registry, "resolve", lambda *args: Resolved("cuda", "fp32", "cuda:0"))
    with pytest.raises(EngineError, match="the Ray cluster has none"):
        resolve_engine(auto, RayOptions())
    asked: list[tuple] = []

    class Remote:
        def __init__(self, fn):
            self.fn = fn

        def remote(self, *args):
            asked.append((self.fn.__name__, args[2:]))
            return "ref"

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 2.0})
    monkeypatch.setattr(ray, "remote", lambda **resources: Remote)
    monkeypatch.setattr(ray, "get", lambda ref: Resolved("cuda", "fp32", "cuda:0"))
    assert resolve_engine(cuda, RayOptions()) == Resolved("cuda", "fp32", "cuda:0")
    assert asked == [("_probe", ("cuda", "auto"))]  # resolved on a GPU worker, nothing built here

