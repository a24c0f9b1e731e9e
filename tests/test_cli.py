"""The command-line contract: data on stdout only, exit codes, formats, env mirrors."""

import csv
import io
import json
import os
import stat

import numpy as np
import pytest
from conftest import run_cli, textured_image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(7)
    for i, (w, h) in enumerate([(300, 200), (120, 90), (224, 224), (500, 260)]):
        textured_image(rng, w, h).save(d / f"img{i}.png")
    (d / "sub").mkdir()
    textured_image(rng, 256, 256).save(d / "sub" / "photo.jpg", quality=90)
    (d / "notes.txt").write_text("not an image")
    return d


def jsonl(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode("utf-8").splitlines()]


def test_jsonl_stdout_holds_only_data(home, folder):
    p = run_cli("scan", str(folder))
    assert p.returncode in (0, 1), p.stderr
    recs = jsonl(p.stdout)
    assert recs[0]["type"] == "header" and recs[-1]["type"] == "summary"
    results = recs[1:-1]
    assert [r["path"] for r in results] == [
        str(folder / n) for n in ["img0.png", "img1.png", "img2.png", "img3.png", "notes.txt", "sub/photo.jpg"]
    ]
    assert results[4] == {"type": "result", "path": str(folder / "notes.txt"), "status": "skipped", "error_code": "not_an_image"}
    for r in results[:4] + results[5:]:
        assert r["status"] in ("real", "fake") and isinstance(r["score"], float) and r["head"] == "linear"
    s = recs[-1]
    assert (s["files"], s["skipped"], s["errors"], s["real"] + s["fake"]) == (6, 1, 0, 5)
    assert p.returncode == (1 if s["fake"] else 0)
    assert b"Traceback" not in p.stderr


@pytest.mark.parametrize("threshold,code,status", [("1e9", 0, "real"), ("-1e9", 1, "fake")])
def test_exit_code_follows_verdicts(home, folder, threshold, code, status):
    p = run_cli("scan", str(folder / "img0.png"), str(folder / "img1.png"), "--threshold", threshold, "-q")
    assert p.returncode == code
    assert {r["status"] for r in jsonl(p.stdout)[1:-1]} == {status}
    assert p.stderr == b""  # --quiet


def test_errors_win_and_the_scan_goes_on(home, folder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes((folder / "img0.png").read_bytes()[:200])
    p = run_cli("scan", str(bad), str(folder / "img1.png"), "--threshold", "-1e9")
    assert p.returncode == 2
    recs = jsonl(p.stdout)[1:-1]
    assert recs[0]["status"] == "error" and recs[0]["error_code"] == "truncated" and "score" not in recs[0]
    assert recs[1]["status"] == "fake"


def test_head_all_and_csv(home, folder):
    p = run_cli("scan", str(folder), "--head", "all", "--format", "csv", "--threshold", "knn=0.5")
    rows = list(csv.DictReader(io.StringIO(p.stdout.decode())))
    assert list(rows[0]) == [
        "path", "status", "score", "threshold", "head", "width", "height", "format", "error_code", "error", "sha256",
        "archive", "member", "member_index", "key",
        "score_linear", "status_linear", "score_knn", "status_knn", "score_ocsvm", "status_ocsvm", "combined", "evidence",
    ]
    img = rows[0]
    assert img["status"] == img["status_linear"] and img["head"] == "linear"
    assert (float(img["score_knn"]) > 0.5) == (img["status_knn"] == "fake")
    assert rows[4]["status"] == "skipped" and rows[4]["score_knn"] == ""


def test_json_is_atomic_and_complete(home, folder, tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old")
    p = run_cli("scan", str(folder), "-o", str(out), "-q")
    assert p.returncode in (0, 1) and p.stdout == b""
    doc = json.loads(out.read_text())
    assert doc["header"]["head"] == "linear" and len(doc["results"]) == 6 and doc["summary"]["files"] == 6
    assert os.listdir(tmp_path) == ["out.json"]  # no temp file left behind


def test_special_output_written_in_place(home, folder):
    p = run_cli("scan", str(folder / "img0.png"), "-o", "/dev/null", "--format", "json", "-q")
    assert p.returncode in (0, 1), p.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_files_from_stdin_nul_and_env_mirrors(home, folder):
    names = f"{folder / 'img2.png'}\0{folder / 'notes.txt'}\0".encode()
    p = run_cli("scan", "--files-from", "-", "-0", input=names, env={"CODESCAN_FORMAT": "csv", "CODESCAN_QUIET": "1"})
    rows = list(csv.DictReader(io.StringIO(p.stdout.decode())))
    assert [r["path"] for r in rows] == [str(folder / "img2.png"), str(folder / "notes.txt")]
    assert p.stderr == b""


def test_non_utf8_names_round_trip(home, folder, tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    with open(raw, "wb") as fh:
        fh.write((folder / "img1.png").read_bytes())
    p = run_cli("scan", str(tmp_path), "-q")
    text = p.stdout.decode("utf-8")  # always valid UTF-8
    assert "caf\\udce9.png" in text
    (rec,) = jsonl(p.stdout)[1:-1]
    assert os.fsencode(rec["path"]) == raw
    p = run_cli("scan", str(tmp_path), "-q", "--format", "csv")
    assert "caf\\udce9.png" in p.stdout.decode("utf-8")


def test_fatal_errors_are_one_line_without_traceback(tmp_path, folder):
    p = run_cli("scan", str(folder), "--weights", "mine", env={"CODESCAN_HOME": str(tmp_path)})
    assert p.returncode == 2 and p.stdout == b""
    err = p.stderr.decode()
    assert "codescan: error: no weights bundle 'mine'" in err and "Traceback" not in err
    p = run_cli("scan", str(folder), env={"CODESCAN_HOME": str(tmp_path), "CODESCAN_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr.decode()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--head", "bogus"], "--head"),
        (["--head", "all", "--threshold", "0.5"], "name the head"),
        (["--threshold", "knn=abc"], "not a number"),
        (["--format", "xml"], "--format"),
    ],
)
def test_usage_errors(home, folder, args, needle):
    p = run_cli("scan", str(folder), *args)
    assert p.returncode == 2 and needle in p.stderr.decode() and p.stdout == b""


def _commands() -> list[tuple[str, object]]:
    """Every leaf command of the tree, with its name as typed."""
    import typer

    from codescan.cli.entry import app

    def leaves(name, command):
        subs = getattr(command, "commands", None)
        if subs is None:
            return [(name, command)]
        return [leaf for sub, c in subs.items() for leaf in leaves(f"{name} {sub}".strip(), c)]

    return leaves("", typer.main.get_command(app))


def test_help_names_what_each_value_is_never_a_python_type():
    """typer writes `<str>`, `<path>`, `<int range>`, `<list[str]>` where no metavar is given;
    every value has a metavar (or its choices) and arguments show their name alone."""
    import re

    import typer

    pythonic = re.compile(r"<(str|path|int|float|bool|list|file|dir)\b|list\[|\{[a-z_]+\}|``")
    seen = []
    for name, command in _commands():
        text = command.get_help(typer.Context(command, info_name=f"codescan {name}"))
        seen += [f"{name}: {line.strip()}" for line in text.splitlines() if pythonic.search(line)]
    assert seen == []


def test_an_option_is_never_taken_as_the_value_of_the_one_before(home, folder, tmp_path):
    """`--resume -o out.jsonl` (a flag remembered wrong) resumed into a file named `-o` and scanned
    out.jsonl as an input; every command of the tree refuses it, and `--opt=-o` still passes."""
    from codescan.cli.options import Command

    commands = [c for _, c in _commands()]
    assert len(commands) >= 12 and all(isinstance(c, Command) for c in commands)

    out = tmp_path / "out.jsonl"
    p = run_cli("scan", str(folder / "img0.png"), "--resume", "-o", str(out), cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == b"" and "'-o' is an option" in p.stderr.decode()
    assert sorted(os.listdir(tmp_path)) == []
    p = run_cli("weights", "import", "--name", "--help", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "'--help' is an option" in p.stderr.decode()
    completing = {"COMP_WORDS": "codescan scan --resume -o ", "COMP_CWORD": "4", "_CODESCAN_COMPLETE": "complete_bash"}
    p = run_cli(env=completing, cwd=tmp_path)  # shell completion parses a half-typed line: never an error
    assert p.returncode == 0 and p.stderr == b""
    p = run_cli("scan", str(folder / "img0.png"), "-q", "--threshold", "-0.5", "--exclude=-q", "-o", "-")
    assert p.returncode in (0, 1) and jsonl(p.stdout)[1]["threshold"] == -0.5, p.stderr


def test_version():
    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.decode().startswith("codescan ")


def test_json_output_keeps_mode_and_symlink(home, folder, tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real.name)
    p = run_cli("scan", str(folder / "img0.png"), "-o", str(link), "-q")
    assert p.returncode in (0, 1), p.stderr
    assert link.is_symlink() and json.loads(real.read_text())["summary"]["files"] == 1
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.json"
    assert run_cli("scan", str(folder / "img0.png"), "-o", str(fresh), "-q").returncode in (0, 1)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
