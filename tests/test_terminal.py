"""The scan as a person runs it: stderr a real terminal (a pty), the README's own first command.

The first release crashed on exactly this (a progress column formatted a field the task did
not have) and no test noticed, because no test gave the scan a terminal. Each test here runs
`codescan` under a pseudo-terminal (tests/terminal.py) with a set window size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from conftest import textured_image
from rich.console import Console
from terminal import run_in_terminal

from codescan.core.records import Summary
from codescan.output import progress as progress_module
from codescan.output.progress import ScanProgress, columns

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = str(Path(sys.executable).parent)
N_IMAGES = 8
COLOR = re.compile(r"\x1b\[[0-9;]*m")


def readme_first_scan() -> str:
    """The scan in the README's first shell block, as a user types it once installed."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    command = block.strip().splitlines()[-1].split("&&")[-1].strip()
    assert command.startswith(".venv/bin/codescan scan"), command
    return command.removeprefix(".venv/bin/")


@pytest.fixture(scope="module")
def user(tmp_path_factory, session_home) -> dict[str, str]:
    """A home folder with ~/Pictures, and the test bundle installed as the default weights."""
    home = tmp_path_factory.mktemp("user")
    pictures = home / "Pictures"
    pictures.mkdir()
    rng = np.random.default_rng(5)
    for i in range(N_IMAGES):
        im = textured_image(rng, int(rng.integers(120, 300)), int(rng.integers(120, 300)))
        im.save(pictures / (f"holiday {i}.jpg" if i % 2 else f"scan-{i}.png"))
    return {
        **os.environ,
        "HOME": str(home),
        "CODESCAN_HOME": str(session_home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "TERM": "xterm-256color",
        **{k: "" for k in ("NO_COLOR", "CODESCAN_QUIET", "CODESCAN_DEBUG")},
    }


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _no_crash(screen: str) -> None:
    assert "internal error" not in screen and "Traceback" not in screen, screen


def test_readme_first_command_in_a_terminal(user):
    command = readme_first_scan()
    run = run_in_terminal(command, user, cwd=user["HOME"])
    _no_crash(run.screen)
    assert run.status in (0, 1), run.screen
    records = _records(Path(user["HOME"]) / "verdicts.jsonl")
    assert [r["type"] for r in records] == ["header"] + ["result"] * N_IMAGES + ["summary"]
    assert f"{N_IMAGES} files:" in run.screen  # the summary line reached the terminal


@pytest.mark.parametrize(
    "redirect,out",
    [("-o verdicts.json", "verdicts.json"), ("| cat > piped.jsonl", "piped.jsonl"), ("-o verdicts.csv", "verdicts.csv")],
)
def test_stdout_file_pipe_and_output_option(user, tmp_path, redirect, out):
    run = run_in_terminal(f"codescan scan ~/Pictures {redirect}", user, cwd=str(tmp_path))
    _no_crash(run.screen)
    assert (tmp_path / out).stat().st_size > 0
    assert not list(tmp_path.glob(".codescan.*")), "a temporary file was left behind"
    if out.endswith(".json"):
        assert len(json.loads((tmp_path / out).read_text())["results"]) == N_IMAGES


@pytest.mark.parametrize("cols", [1, 60, 200])
def test_terminal_widths(user, tmp_path, cols):
    run = run_in_terminal("codescan scan ~/Pictures > v.jsonl", user, cwd=str(tmp_path), cols=cols)
    _no_crash(run.screen)
    assert run.status in (0, 1)
    assert len(_records(tmp_path / "v.jsonl")) == N_IMAGES + 2


def test_progress_line_is_drawn_with_its_fields(user, tmp_path):
    env = {**user, "CODESCAN_TEST_DECODE_DELAY": "0.3"}
    run = run_in_terminal("codescan scan ~/Pictures > v.jsonl", env, cwd=str(tmp_path), cols=120)
    _no_crash(run.screen)
    assert re.search(rf"\d+/{N_IMAGES} files", run.screen), run.screen  # the pre-count gave a total
    assert re.search(r"\d+ fake, \d+ errors?", run.screen), run.screen
    assert "ETA" in run.screen and "/s" in run.screen, run.screen


def test_no_color(user, tmp_path):
    colored = run_in_terminal("codescan scan ~/Pictures > v.jsonl", user, cwd=str(tmp_path))
    plain = run_in_terminal("codescan scan ~/Pictures > v.jsonl", {**user, "NO_COLOR": "1"}, cwd=str(tmp_path))
    _no_crash(plain.screen)
    assert COLOR.search(colored.screen), "the colour test would prove nothing"
    assert not COLOR.search(plain.screen), plain.screen


def test_dumb_terminal_gets_no_progress_line(user, tmp_path):
    run = run_in_terminal("codescan scan ~/Pictures > v.jsonl", {**user, "TERM": "dumb"}, cwd=str(tmp_path))
    _no_crash(run.screen)
    assert "\x1b[2K" not in run.screen and f"{N_IMAGES} files:" in run.screen, run.screen


def test_ctrl_c_in_a_terminal(user, tmp_path):
    """^C typed into the terminal: what is done is flushed, an interrupted summary, exit 130."""
    pictures = tmp_path / "many"
    pictures.mkdir()
    rng = np.random.default_rng(9)
    for i in range(60):
        textured_image(rng, 80, 80).save(pictures / f"{i:02d}.png")
    out = tmp_path / "v.jsonl"

    def some_results() -> bool:
        return out.exists() and out.read_text().count('"type": "result"') >= 3

    env = {**user, "CODESCAN_TEST_DECODE_DELAY": "0.1"}
    run = run_in_terminal("codescan scan many > v.jsonl", env, cwd=str(tmp_path), interrupt_when=some_results)
    _no_crash(run.screen)
    assert run.status == 130, run.screen
    records = _records(out)
    assert records[-1]["type"] == "summary" and records[-1]["interrupted"] is True
    assert 3 <= records[-1]["files"] < 60 and "interrupted:" in run.screen


def test_closed_stderr_and_stdout(user, tmp_path):
    env = {**user, "CODESCAN_TEST_DECODE_DELAY": "0.05"}
    closed_err = run_in_terminal("codescan scan ~/Pictures 2>&- > v.jsonl", env, cwd=str(tmp_path))
    assert closed_err.status in (0, 1) and closed_err.screen == "", closed_err.screen
    assert len(_records(tmp_path / "v.jsonl")) == N_IMAGES + 2
    closed_out = run_in_terminal("codescan scan ~/Pictures >&-", env, cwd=str(tmp_path))
    assert closed_out.status == 2 and "standard output is closed" in closed_out.screen, closed_out.screen
    many = " ".join(["~/Pictures"] * 20)  # enough records that the reader is gone before the end
    piped = run_in_terminal(
        f"codescan scan --no-cache {many} | head -1 > first.jsonl; exit ${{PIPESTATUS[0]}}", env, cwd=str(tmp_path)
    )
    _no_crash(piped.screen)
    assert piped.status == 141, piped.screen
    assert json.loads((tmp_path / "first.jsonl").read_text())["type"] == "header"


def test_every_progress_column_renders_on_every_path(monkeypatch):
    """Draw each column for the task as created, with a total, after updates and when finished."""
    monkeypatch.setattr(progress_module, "SHOW_SECONDS", 0.0)  # every update drawn: this test is about the columns
    console = Console(file=StringIO(), force_terminal=True, force_interactive=True, width=100)
    progress = ScanProgress(quiet=False, console=console)
    summary = Summary()
    task = progress._progress.tasks[0]
    states = []
    for step in ("created", "total", "advanced", "finished"):
        if step == "total":
            progress.set_total(3)
        elif step == "advanced":
            summary.count("fake")
            progress.advance(summary, 1)
        elif step == "finished":
            summary.count("error")
            progress.advance(summary, 1)
            progress.set_total(2)
        states.append(" ".join(str(column.render(task)) for column in columns()))
    assert "0 files" in states[0] and "0/3 files" in states[1] and "1 fake" in states[2] and "1 error" in states[3]


def test_the_line_takes_files_in_bursts_and_the_exact_count_at_the_end(monkeypatch):
    """An update of rich's task costs more than a record: the line takes the files done at most
    every SHOW_SECONDS, and all of them when it closes."""
    monkeypatch.setattr(progress_module, "SHOW_SECONDS", 3600.0)  # no second burst within this test
    console = Console(file=StringIO(), force_terminal=True, force_interactive=True, width=100)
    progress = ScanProgress(quiet=False, console=console)
    summary = Summary()
    task = progress._progress.tasks[0]
    with progress:
        for _ in range(100):
            for _ in range(5):
                summary.count("fake")
            progress.advance(summary, 5)  # the job hands over lists: a batch's records
        assert task.completed <= 5  # at most the first list drawn so far
    assert task.completed == 500 and task.fields["fake"] == 500


def test_the_line_counts_every_file_of_the_lists_the_job_hands_over(tmp_path):
    """The job hands its progress callback lists of records (a batch's): the line must count their
    files, not the lists (a fresh clone's scan once stood at 2/12 files with 12 done)."""
    from codescan.core.records import Header, Result
    from codescan.output.reporters import make_reporter
    from codescan.scan import job

    class Lists:
        def header(self) -> Header:
            return Header("0", {}, "null", "cpu", "fp32", "linear")

        def batches(self, arguments, skip):
            for size in (1, 8, 3, 64, 2):
                yield [Result(path=f"{size}-{i}", status="skipped", error_code="not_an_image") for i in range(size)]

    progress = ScanProgress(quiet=False, console=Console(file=StringIO(), force_terminal=True, width=100))
    with progress:
        result = job.run(Lists(), make_reporter("jsonl", str(tmp_path / "o.jsonl")), Lists().header(), [],
                         Summary(), on_result=progress.advance)
    assert result.scanned == 78 and progress._progress.tasks[0].completed == 78


def test_no_absolute_paths_in_tracked_files():
    """The suite runs from any clone: corpora are found relative to the repository."""
    import subprocess

    root = README.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    # This machine's layout, spelled at run time: the checkout itself and the shared folder beside
    # it (not their parent, which may be the temporary folder the docs rightly name), and "work".
    needles = {str(root) + os.sep, str(root.parent / "shared") + os.sep, os.sep + "work" + os.sep}
    offenders = [f for f in files if any(n in (root / f).read_text(errors="replace") for n in needles)]
    assert offenders == [], offenders
