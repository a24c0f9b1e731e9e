import os

from codescan.walk import WalkOptions, read_path_list, walk


def touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def displays(args, **kw):
    return [(e.display, e.error[0] if e.error else None) for e in walk(args, WalkOptions(**kw))]


def test_depth_first_sorted_by_bytes(tmp_path):
    for rel in ["b.jpg", "a/z.png", "a/b/c.png", "B.jpg", "a.jpg", "_x.png", ".hidden.png"]:
        touch(tmp_path / rel)
    root = str(tmp_path)
    got = [d for d, _ in displays([root])]
    rel = [os.path.relpath(g, root) for g in got]
    # bytes order: '.' < 'B' < '_' < 'a' < 'a.jpg'... and a directory is entered where it sorts
    assert rel == [".hidden.png", "B.jpg", "_x.png", "a/b/c.png", "a/z.png", "a.jpg", "b.jpg"]


def test_arguments_keep_their_order_and_spelling(tmp_path):
    touch(tmp_path / "d" / "x.png")
    touch(tmp_path / "f.png")
    os.chdir(tmp_path)
    assert [d for d, _ in displays(["f.png", "d/", "./d"])] == ["f.png", "d/x.png", "./d/x.png"]


def test_missing_argument_is_an_error_record(tmp_path):
    assert displays([str(tmp_path / "nope")]) == [(str(tmp_path / "nope"), "io_error")]


def test_excludes_match_names_and_paths(tmp_path):
    for rel in ["keep.png", "skip.txt", "cache/a.png", "sub/cache2/b.png"]:
        touch(tmp_path / rel)
    os.chdir(tmp_path)
    got = [d for d, _ in displays(["."], excludes=("*.txt", "cache", "./sub/*"))]
    assert got == ["./keep.png"]


def test_symlinks_not_followed_unless_asked_and_loops_reported(tmp_path):
    touch(tmp_path / "real" / "a.png")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.symlink(tmp_path, tmp_path / "real" / "loop")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken.png")
    os.chdir(tmp_path)
    assert displays(["."]) == [("./real/a.png", None)]
    followed = displays(["."], follow_symlinks=True)
    assert ("./broken.png", "io_error") in followed
    assert ("./link/a.png", None) in followed and ("./real/a.png", None) in followed
    assert ("./link/loop", "symlink_loop") in followed and ("./real/loop", "symlink_loop") in followed
    # a link named on the command line is followed
    assert displays(["link"]) == [("link/a.png", None)]


def test_unreadable_directory(tmp_path, monkeypatch):
    # chmod 0 does not stop root (CI runs as root), so make scandir refuse like the kernel would.
    touch(tmp_path / "locked" / "a.png")
    touch(tmp_path / "open" / "b.png")
    real_scandir = os.scandir

    def scandir(path):
        if os.fsdecode(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("codescan.walk.os.scandir", scandir)
    assert displays([str(tmp_path)]) == [
        (str(tmp_path / "locked"), "permission_denied"),
        (str(tmp_path / "open" / "b.png"), None),
    ]


def test_non_utf8_names_survive(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    with open(raw, "wb") as fh:
        fh.write(b"x")
    (entry,) = list(walk([str(tmp_path)]))
    assert entry.path == raw
    assert entry.display.endswith("caf\udce9.png")
    assert os.fsencode(entry.display) == raw


def test_fifo_inside_walk_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    touch(tmp_path / "a.png")
    assert [d for d, _ in displays([str(tmp_path)])] == [str(tmp_path / "a.png")]


def test_walk_is_lazy(tmp_path):
    for i in range(50):
        touch(tmp_path / f"d{i:02d}" / "x.png")
    it = walk([str(tmp_path)])
    first = next(it)
    assert first.display.endswith("d00/x.png")


def test_read_path_list():
    assert read_path_list(b"a.png\r\nb c.png\n\n", nul=False) == [b"a.png", b"b c.png"]
    assert read_path_list(b"a\nb.png\0c.png\0", nul=True) == [b"a\nb.png", b"c.png"]
