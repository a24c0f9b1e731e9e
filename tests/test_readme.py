"""The docs are executable: every shell block a user would copy runs here, on a tiny data set.

The pages are README.md and every docs/*.md. Each page runs in its own sandbox, a fresh copy of
one small world built once (./photos, ./CoDE, labelled/, test.csv, shards/00000.tar,
images.parquet, ~/Pictures, bundles `code` and `mine`); a page's ```bash blocks run in order as
bash scripts, each continuing from the state the previous ones left, as a reader following the
page would. A block that installs, downloads, benchmarks, needs a GPU or a cloud bucket, or is
the test command itself starts with a visible `# not-run: <reason>` line and is only checked to
carry one. The output shapes the docs show (docs/output.md's JSON records, the one source of the
record schema; eval's JSON outline in docs/training.md) are compared with what the commands
print. Pages also start with the commands to copy, and their relative links resolve.
Budget: about 50 s on 2 cores, nearly all of it the blocks themselves (a page's copy of the world
takes a fraction of a second).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from conftest import CODESCAN, require, textured_image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
OUTPUT_PAGE = DOCS / "output.md"  # the record schema, exit codes and error codes
TRAINING_PAGE = DOCS / "training.md"  # eval's JSON outline
SHELL = ("bash", "sh", "shell", "console")
NOT_RUN = re.compile(r"^# not-run: (\S.*)$")
VENV_NOTE = ". .venv/bin/activate"
MIN_RUNNABLE = 12  # blocks run over all pages (12 when this was written: README 2, docs 10)


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(page: Path, language: tuple[str, ...] = SHELL) -> list[tuple[int, str, str]]:
    """(line number, info string, body) of every fenced block of the given languages."""
    text = page.read_text()
    out = []
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if m.group(1) in language:
            out.append((text[: m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


def shell_blocks(page: Path) -> list[tuple[int, str]]:
    return [(line, body) for line, _, body in blocks(page)]


def not_run_reason(body: str) -> str | None:
    marker = NOT_RUN.match(body.splitlines()[0])
    return marker.group(1) if marker else None


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_checkpoint) -> Path:
    """The docs' world, built once: folders they name, archives, the test bundle as `code` and `mine`."""
    require(find_spec("pyarrow") is not None and find_spec("pandas") is not None, "pyarrow and pandas",
            "pip install '.[test]' (the datasets page reads and writes Parquet)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("world")
    home, cwd = root / "home", root / "work"
    rng = np.random.default_rng(3)
    for folder, n in ((home / "Pictures", 4), (cwd / "photos", 6)):
        folder.mkdir(parents=True)
        for i in range(n):
            textured_image(rng, int(rng.integers(100, 300)), int(rng.integers(100, 300))).save(folder / f"p{i}.jpg")
    photos = sorted((cwd / "photos").glob("p*.jpg"))
    good = photos[0].read_bytes()
    (cwd / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + good[:50])
    (cwd / "photos" / "notes.txt").write_text("not an image\n")
    rows = ["path,label,generator"]
    for label, gens in (("real", [""]), ("fake", ["genA", "genB"])):
        for gen in gens:
            folder = cwd / "labelled" / label / gen
            folder.mkdir(parents=True)
            for i in range(4):
                textured_image(rng, 160, 160).save(folder / f"{i}.png")
                rows.append(f"labelled/{label}/{gen + '/' if gen else ''}{i}.png,{label},{gen}")
    (cwd / "test.csv").write_text("\n".join(rows) + "\n")
    shutil.copytree(small_checkpoint, cwd / "CoDE")
    # A WebDataset shard as img2dataset writes it (key.jpg, key.json, key.txt) and a Hugging Face
    # style Parquet file (an `image` struct {bytes, path} and a `key` column).
    import io
    import tarfile

    (cwd / "shards").mkdir()
    with tarfile.open(cwd / "shards" / "00000.tar", "w") as tar:
        for i, photo in enumerate(photos):
            for suffix, data in ((".jpg", photo.read_bytes()), (".json", b'{"key": "%09d"}' % i), (".txt", b"a caption")):
                info = tarfile.TarInfo(f"{i:09d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({
        "key": [f"row{i}" for i in range(len(photos))],
        "image": pa.array([{"bytes": p.read_bytes(), "path": p.name} for p in photos], type=image),
    }), cwd / "images.parquet")
    env = _env(root)
    for name in ("code", "mine"):
        subprocess.run([CODESCAN, "weights", "import", str(cwd / "CoDE"), "--name", name], env=env, check=True,
                       capture_output=True)
    # Build and cache the default bundle's ONNX graph once, so that no page's copy builds it again.
    subprocess.run([CODESCAN, "scan", "photos/p0.jpg", "-q", "--no-cache"], cwd=cwd, env=env, capture_output=True)
    return root


def _env(root: Path) -> dict:
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "CODESCAN_HOME": str(root / "store"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NO_COLOR": "1",
    }
    env.pop("CODESCAN_DEBUG", None)
    return env


def fresh_sandbox(world: Path, dest: Path) -> dict:
    """A private copy of the world (bundles, caches and modes included), as a page's reader starts."""
    shutil.copytree(world, dest, symlinks=True)
    return {"cwd": dest / "work", "env": _env(dest)}


@pytest.fixture()
def sandbox(world, tmp_path) -> dict:
    return fresh_sandbox(world, tmp_path / "world")


def _run(body: str, sandbox: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", body], cwd=sandbox["cwd"], env=sandbox["env"], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_shell_block_runs_or_says_why_not(page, world, tmp_path):
    sandbox = fresh_sandbox(world, tmp_path / "world")
    where = _name(page)
    for line, body in shell_blocks(page):
        reason = not_run_reason(body)
        if reason is not None:
            assert len(reason) > 5, f"{where} line {line}: say why the block is not run"
            continue
        assert not body.splitlines()[0].startswith("#"), f"{where} line {line}: a leading comment that is not a not-run marker"
        if "jq " in body:
            require(shutil.which("jq") is not None, "jq", "apt install jq (the docs' examples pipe into it)")
        p = _run(body, sandbox)
        assert "Traceback" not in p.stderr and "internal error" not in p.stderr, (where, line, p.stderr)
        assert "codescan: error" not in p.stderr and "command not found" not in p.stderr, (where, line, p.stderr)
        assert p.returncode in (0, 1, 2), (where, line, p.returncode, p.stderr)  # 1: fakes found, 2: photos/broken.png


def test_count_of_blocks_run():
    """How many shell blocks each page runs and how many say why not (run with -s to see the table)."""
    counts = {}
    for page in PAGES:
        found = shell_blocks(page)
        skipped = sum(not_run_reason(body) is not None for _, body in found)
        counts[_name(page)] = (len(found) - skipped, skipped)
    width = max(map(len, counts))
    print(f"\n{'page':<{width}}  run  not-run")
    for name, (ran, skipped) in counts.items():
        print(f"{name:<{width}}  {ran:>3}  {skipped:>7}")
    total_run, total_skipped = (sum(c[i] for c in counts.values()) for i in (0, 1))
    print(f"{'total':<{width}}  {total_run:>3}  {total_skipped:>7}")
    assert total_run >= MIN_RUNNABLE, counts
    assert all(ran + skipped for ran, skipped in counts.values()), f"a page without commands: {counts}"


def test_pages_start_with_the_commands_to_copy():
    """Every docs page opens with a shell block; each page says once that examples assume the venv."""
    for page in PAGES:
        text = page.read_text()
        assert text.count(VENV_NOTE) == 1, f"{_name(page)}: say once that the examples assume `{VENV_NOTE}`"
        if page != README:
            first_line = shell_blocks(page)[0][0]
            assert first_line <= 15, f"{_name(page)}: the first commands are on line {first_line}, not near the top"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_relative_links_resolve():
    """Links between the pages name files that exist and headings that are there."""
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{_name(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_name(page)}: {target} (no such heading)")
    assert broken == []


def test_first_blocks_install_scan_and_test():
    """README starts with the two commands for a fresh machine; .ci/run ends with the second."""
    (_, first), (_, second) = shell_blocks(README)[:2]
    install_scan = first.strip().splitlines()[-1]
    assert install_scan.startswith("python3 -m venv .venv && .venv/bin/pip install . && ")
    assert " scan " in install_scan
    test_command = second.strip().splitlines()[-1]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command


def _shown_records() -> list[dict]:
    body = next(b for _, lang, b in blocks(OUTPUT_PAGE, ("json",)) if '"type": "header"' in b)
    return [json.loads(line) for line in body.splitlines()]


def _shape(record: dict) -> tuple:
    judged = {"fake": "real"}  # a real and a fake record have the same fields
    kind = record["type"], judged.get(record.get("status"), record.get("status")), "archive" in record
    return kind, tuple(sorted(record))


def test_output_page_shows_the_records_a_scan_writes(sandbox):
    _run("mkdir -p output-check && tar -cf output-check/shard.tar -C photos p0.jpg", sandbox)
    p = _run("codescan scan photos output-check/shard.tar -q --no-cache", sandbox)
    written = [json.loads(line) for line in p.stdout.splitlines()]
    shown = _shown_records()
    written_shapes = {_shape(r)[0]: _shape(r)[1] for r in written}
    for record in shown:
        kind, keys = _shape(record)
        if kind in written_shapes:
            assert keys == written_shapes[kind], f"docs/output.md shows {kind} with {keys}, codescan writes {written_shapes[kind]}"
    assert {_shape(r)[0] for r in shown} <= set(written_shapes), "the sandbox should produce every kind of record the docs show"
    header = next(r for r in shown if r["type"] == "header")
    assert sorted(header["weights"]) == sorted(written[0]["weights"])


def test_eval_outline_matches_eval_json(sandbox):
    outline = next(b for _, lang, b in blocks(TRAINING_PAGE, ("",)) if b.startswith("{schema_version"))
    top = outline.split("\nM =", 1)[0]
    while re.search(r"\{[^{}]*\}", top[1:-1]):
        top = top[0] + re.sub(r"\{[^{}]*\}", "", top[1:-1]) + top[-1]
    shown = {name.split(":")[0].strip() for name in top.strip("{}\n ").split(",")}
    p = _run("codescan eval --data labelled/ -q", sandbox)
    assert p.returncode == 0, p.stderr
    assert shown == set(json.loads(p.stdout)), (shown, sorted(json.loads(p.stdout)))
    assert "codescan eval" in TRAINING_PAGE.read_text()


def test_every_error_code_is_in_the_output_page():
    """docs/output.md is the one description of the error codes: one the code can emit and the
    page does not explain is a gap in the contract."""
    from codescan.core.records import ERROR_CODES

    listed = set(re.findall(r"^\| `([a-z_]+)` \| (?:error|skipped) \|", OUTPUT_PAGE.read_text(), re.M))
    assert set(ERROR_CODES) == listed, (set(ERROR_CODES) - listed, listed - set(ERROR_CODES))
