"""Files are opened as the listing saw them (security round 2, R2 and R3).

The race is made deterministic by listing first (the scan's own `sources.entries`), then
swapping, then handing the listed entry to the decode worker's code (`Examiner`), exactly the
order a live scan can be forced into by whoever writes the folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codescan.decoding.examine import ExamineConfig, Examined, Examiner, Skipped
from codescan.inputs.pinned import (
    LinkRefused,
    NotRegular,
    Pin,
    Replaced,
    open_pinned,
    split_beneath,
)
from codescan.inputs.read import DecodeFailure
from codescan.inputs.sources import entries
from codescan.inputs.walk import WalkOptions


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """ds/a.png, ds/sub/b.png, and a secret outside ds/ that links will point at."""
    (tmp_path / "ds" / "sub").mkdir(parents=True)
    (tmp_path / "ds" / "a.png").write_bytes(png(1))
    (tmp_path / "ds" / "sub" / "b.png").write_bytes(png(2))
    (tmp_path / "private" / "sub").mkdir(parents=True)
    (tmp_path / "private" / "secret.png").write_bytes(png(3))
    (tmp_path / "private" / "sub" / "b.png").write_bytes(png(3))
    return tmp_path


def listed(*arguments, **walk) -> dict[str, object]:
    return {os.path.basename(e.display.split("::")[-1]): e for e in entries([str(a) for a in arguments], WalkOptions(**walk))}


def examine(entry) -> object:
    return Examiner(ExamineConfig(evidence="none"))(entry)


def secret_sha(tree: Path) -> bytes:
    return hashlib.sha256((tree / "private" / "secret.png").read_bytes()).digest()


def test_split_beneath_keeps_the_listing_root():
    assert split_beneath(b"ds/sub/b.png", 2) == (b"ds", [b"sub", b"b.png"])
    assert split_beneath(b"sub/b.png", 2) == (b".", [b"sub", b"b.png"])
    assert split_beneath(b"/b.png", 1) == (b"/", [b"b.png"])
    assert split_beneath(b"ds//b.png", 1) == (b"ds/", [b"b.png"])


def test_a_listed_file_swapped_for_a_link_is_not_read(tree):
    entry = listed(tree / "ds")["a.png"]
    assert isinstance(examine(entry), Examined)  # unswapped: read as usual
    os.unlink(tree / "ds" / "a.png")
    os.symlink(tree / "private" / "secret.png", tree / "ds" / "a.png")
    outcome = examine(entry)
    assert isinstance(outcome, DecodeFailure) and outcome.code == "replaced" and outcome.sha256 is None


def test_a_parent_folder_swapped_for_a_link_is_caught(tree):
    entry = listed(tree / "ds")["b.png"]
    os.rename(tree / "ds" / "sub", tree / "ds" / "old")
    os.symlink(tree / "private" / "sub", tree / "ds" / "sub")  # holds a b.png of its own
    outcome = examine(entry)
    assert isinstance(outcome, DecodeFailure) and outcome.code == "replaced"


def test_a_file_renamed_over_the_listed_one_is_caught(tree):
    entry = listed(tree / "ds")["a.png"]
    os.replace(tree / "private" / "secret.png", tree / "ds" / "a.png")  # same name, another inode
    outcome = examine(entry)
    assert isinstance(outcome, DecodeFailure) and outcome.code == "replaced"


def test_a_fifo_swapped_in_never_blocks_the_worker(tree):
    entry = listed(tree / "ds")["a.png"]
    os.unlink(tree / "ds" / "a.png")
    os.mkfifo(tree / "ds" / "a.png")
    started = time.monotonic()
    outcome = examine(entry)
    assert isinstance(outcome, DecodeFailure) and outcome.code == "replaced"
    assert time.monotonic() - started < 5  # a blocking open would wait for a writer forever


def test_a_file_without_image_extension_is_opened_once_and_pinned(tree):
    (tree / "ds" / "notes").write_bytes(b"plain text, not an image")
    (tree / "ds" / "noext").write_bytes(png(4))
    found = listed(tree / "ds")
    assert isinstance(examine(found["notes"]), Skipped) and isinstance(examine(found["noext"]), Examined)
    os.unlink(tree / "ds" / "noext")
    os.symlink(tree / "private" / "secret.png", tree / "ds" / "noext")
    assert examine(found["noext"]).code == "replaced"


def test_named_arguments_and_follow_symlinks_keep_following_links_but_pin_the_target(tree):
    link = tree / "named.png"
    os.symlink(tree / "private" / "secret.png", link)
    named = listed(link)["named.png"]
    assert isinstance(examine(named), Examined)  # a named link is followed, as documented
    os.symlink(tree / "private", tree / "ds" / "linked")
    followed = listed(tree / "ds", follow_symlinks=True)
    assert isinstance(examine(followed["secret.png"]), Examined)
    os.replace(tree / "ds" / "a.png", tree / "private" / "secret.png")  # the target itself replaced
    assert examine(named).code == "replaced" and examine(followed["secret.png"]).code == "replaced"


def test_open_pinned_refuses_links_and_non_files_below_the_root(tree):
    os.symlink("a.png", tree / "ds" / "alias.png")
    with pytest.raises(LinkRefused):
        open_pinned(os.fsencode(tree / "ds" / "alias.png"), Pin(1))
    with pytest.raises(NotRegular):
        open_pinned(os.fsencode(tree / "ds" / "sub"), Pin(1))
    with pytest.raises(Replaced):
        open_pinned(os.fsencode(tree / "ds" / "a.png"), Pin(1, 0, 0))
    os.close(open_pinned(os.fsencode(tree / "ds" / "alias.png"), None))  # unpinned: a plain open


def test_parquet_row_paths_never_pass_through_a_link_whatever_names_the_file(tree):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ds = tree / "ds"
    os.symlink(tree / "private", ds / "link")
    os.symlink(tree / "ds" / "sub", ds / "inside")  # a link that stays inside is refused too
    rows = [{"bytes": None, "path": p} for p in ("a.png", "link/secret.png", "inside/b.png", "sub/b.png")]
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array(rows, type=image)}), ds / "rows.parquet")
    for name in (str(ds / "rows.parquet"), f"file://{ds / 'rows.parquet'}", f"file://{str(ds).replace('/ds', '/%64s')}/rows.parquet"):
        found = [e for e in entries([name]) if e.origin is not None]
        outcomes = [examine(e) for e in found]
        codes = [o.code if isinstance(o, DecodeFailure) else "ok" for o in outcomes]
        assert codes == ["ok", "unsafe_path", "unsafe_path", "ok"], name
        assert all(o.sha256 != secret_sha(tree) for o in outcomes)


def test_a_file_uri_is_walked_like_a_local_path(tree):
    os.symlink(tree / "private" / "secret.png", tree / "ds" / "leak.png")
    found = list(entries([f"file://{tree / 'ds'}"]))
    assert [e.display for e in found] == [f"file://{tree / 'ds' / 'a.png'}", f"file://{tree / 'ds' / 'sub' / 'b.png'}"]
    assert all(not e.uri and e.pin is not None for e in found)  # read by codescan's confined open, not pyarrow


def test_the_thumbnailer_opens_no_link_and_waits_on_no_fifo(tree, tmp_path):
    from codescan.decoding.decode import DecodeLimits
    from codescan.inputs.walk import Entry
    from codescan.review.thumbs import LATER, ThumbTask, make_thumb

    os.mkfifo(tree / "private" / "pipe")
    os.symlink(tree / "private" / "pipe", tree / "ds" / "via-link.png")
    os.symlink(tree / "private" / "secret.png", tree / "ds" / "secret-link.png")
    limits = DecodeLimits()

    def thumb(name: str, sha: str) -> str:
        path = os.fsencode(tree / "ds" / name)
        return make_thumb(ThumbTask(sha, Entry(display=name, path=path, pin=LATER), str(tmp_path / "t.jpg")), limits)

    started = time.monotonic()
    assert thumb("via-link.png", "0" * 64) == "failed"
    assert time.monotonic() - started < 5
    assert thumb("secret-link.png", secret_sha(tree).hex()) == "failed"  # the right bytes, but behind a link
    assert thumb("a.png", hashlib.sha256(png(1)).hexdigest()) == "ok"
