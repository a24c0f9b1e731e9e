"""The README is executable: every shell block a user would copy runs here, in order, on a tiny data set.

A ```bash block runs as one bash script in a sandbox that looks like the README's world
(./photos, ./CoDE, labelled/, test.csv, ~/Pictures, bundles `code` and `mine`); each block
continues from the state the previous ones left, as a reader following along would. A block
that installs, downloads, benchmarks, needs a GPU or a cloud bucket, or is the test command
itself starts with a visible `# not-run: <reason>` line and is only checked to carry one. The
output shapes the README shows (the Output section's JSON records, eval's JSON outline) are
compared with what the commands print. Budget: about 60 s in all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CODESCAN, require, textured_image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL = ("bash", "sh", "shell", "console")
NOT_RUN = re.compile(r"^# not-run: (\S.*)$")


def blocks(language: tuple[str, ...] = SHELL) -> list[tuple[int, str, str]]:
    """(line number, info string, body) of every fenced block of the given languages."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if m.group(1) in language:
            out.append((text[: m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


def shell_blocks() -> list[tuple[int, str]]:
    return [(line, body) for line, _, body in blocks()]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, small_checkpoint) -> dict:
    """The README's world: folders it names, the test bundle installed as `code` and `mine`."""
    root = tmp_path_factory.mktemp("readme")
    home, store, cwd = root / "home", root / "store", root / "work"
    rng = np.random.default_rng(3)
    for folder, n in ((home / "Pictures", 4), (cwd / "photos", 6)):
        folder.mkdir(parents=True)
        for i in range(n):
            textured_image(rng, int(rng.integers(100, 300)), int(rng.integers(100, 300))).save(folder / f"p{i}.jpg")
    good = (cwd / "photos" / "p0.jpg").read_bytes()
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
    env = {
        **os.environ,
        "HOME": str(home),
        "CODESCAN_HOME": str(store),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NO_COLOR": "1",
    }
    env.pop("CODESCAN_DEBUG", None)
    for name in ("code", "mine"):
        subprocess.run([CODESCAN, "weights", "import", str(cwd / "CoDE"), "--name", name], env=env, check=True,
                       capture_output=True)
    return {"cwd": cwd, "env": env}


def _run(body: str, sandbox: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", body], cwd=sandbox["cwd"], env=sandbox["env"], capture_output=True,
                          text=True, timeout=300)


def test_every_shell_block_runs_or_says_why_not(sandbox):
    ran = []
    for line, body in shell_blocks():
        first = body.splitlines()[0]
        marker = NOT_RUN.match(first)
        if marker:
            assert len(marker.group(1)) > 5, f"README line {line}: say why the block is not run"
            continue
        assert not first.startswith("#"), f"README line {line}: a leading comment that is not a not-run marker"
        if "jq " in body:
            require(shutil.which("jq") is not None, "jq", "apt install jq (the README's examples pipe into it)")
        p = _run(body, sandbox)
        assert "Traceback" not in p.stderr and "internal error" not in p.stderr, (line, p.stderr)
        assert "codescan: error" not in p.stderr and "command not found" not in p.stderr, (line, p.stderr)
        assert p.returncode in (0, 1, 2), (line, p.returncode, p.stderr)  # 1: fakes found, 2: photos/broken.png
        ran.append(line)
    assert len(ran) >= 4, ran  # the examples a reader copies do run


def test_first_blocks_install_scan_and_test():
    """README starts with the two commands for a fresh machine; .ci/run ends with the second."""
    (_, first), (_, second) = shell_blocks()[:2]
    install_scan = first.strip().splitlines()[-1]
    assert install_scan.startswith("python3 -m venv .venv && .venv/bin/pip install . && ")
    assert " scan " in install_scan
    test_command = second.strip().splitlines()[-1]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command


def _shown_records() -> list[dict]:
    output = README.read_text().split("### Output", 1)[1]
    body = next(b for _, lang, b in blocks(("json",)) if b in output)
    return [json.loads(line) for line in body.splitlines()]


def _shape(record: dict) -> tuple:
    judged = {"fake": "real"}  # a real and a fake record have the same fields
    kind = record["type"], judged.get(record.get("status"), record.get("status")), "archive" in record
    return kind, tuple(sorted(record))


def test_output_section_shows_the_records_a_scan_writes(sandbox):
    _run("mkdir -p output-check && tar -cf output-check/shard.tar -C photos p0.jpg", sandbox)
    p = _run("codescan scan photos output-check/shard.tar -q --no-cache", sandbox)
    written = [json.loads(line) for line in p.stdout.splitlines()]
    shown = _shown_records()
    written_shapes = {_shape(r)[0]: _shape(r)[1] for r in written}
    for record in shown:
        kind, keys = _shape(record)
        if kind in written_shapes:
            assert keys == written_shapes[kind], f"README shows {kind} with {keys}, codescan writes {written_shapes[kind]}"
    assert {_shape(r)[0] for r in shown} <= set(written_shapes), "the sandbox should produce every kind of record the README shows"
    header = next(r for r in shown if r["type"] == "header")
    assert sorted(header["weights"]) == sorted(written[0]["weights"])


def test_eval_outline_matches_eval_json(sandbox):
    text = README.read_text()
    outline = next(b for _, lang, b in blocks(("",)) if b.startswith("{schema_version"))
    top = outline.split("\nM =", 1)[0]
    while re.search(r"\{[^{}]*\}", top[1:-1]):
        top = top[0] + re.sub(r"\{[^{}]*\}", "", top[1:-1]) + top[-1]
    shown = {name.split(":")[0].strip() for name in top.strip("{}\n ").split(",")}
    p = _run("codescan eval --data labelled/ -q", sandbox)
    assert p.returncode == 0, p.stderr
    assert shown == set(json.loads(p.stdout)), (shown, sorted(json.loads(p.stdout)))
    assert "codescan eval" in text
