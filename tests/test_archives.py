"""Archives and Parquet files as inputs (#16): records equal those of the extracted files, hostile
archives cost one record each, resume keys on (archive, member_index), Parquet output joins back."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from archive_kit import (
    corrupt_parquet_page,
    encrypted_zip,
    nested,
    overlapping_zip,
    parquet_images,
    tar_claiming,
    tar_of,
    tiny_jpeg,
    tiny_png,
    truncated,
    webdataset_shard,
    zip_bomb,
    zip_of,
)
from conftest import run_cli

from codescan.inputs.isolated import ReaderError, isolated
from codescan.inputs.members import webdataset_key
from codescan.inputs.parquet import image_column
from codescan.inputs.zip import _overlaps


def results(stdout: bytes) -> list[dict]:
    return [r for r in map(json.loads, stdout.decode().splitlines()) if r["type"] == "result"]


def verdicts(records: list[dict]) -> list[tuple]:
    return [(r["status"], r.get("score"), r.get("error_code"), r.get("sha256")) for r in records]


@pytest.fixture(scope="module")
def corpus_subset(labeled, tmp_path_factory) -> list[tuple[str, bytes]]:
    """Twelve real and twelve generated files of the labelled corpus, as (relative name, bytes)."""
    picked = []
    for label in ("real", "fake"):
        files = sorted(p for p in (labeled / label).rglob("*") if p.is_file())
        picked += files[:: max(1, len(files) // 12)][:12]
    return [(str(p.relative_to(labeled)), p.read_bytes()) for p in picked]


def test_archives_and_parquet_give_the_records_of_the_extracted_files(home, corpus_subset, tmp_path):
    folder = tmp_path / "extracted"
    for name, data in corpus_subset:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    names = [n for n, _ in corpus_subset]
    keys = [f"{i:09d}" for i in range(len(names))]  # img2dataset's sample keys; every image stored as key.jpg
    inputs = [
        webdataset_shard(tmp_path / "shard-00000.tar", [(k, d, "a caption") for k, (_, d) in zip(keys, corpus_subset)]),
        zip_of(tmp_path / "deflated.zip", corpus_subset, zipfile.ZIP_DEFLATED),
        tar_of(tmp_path / "gzipped.tar.gz", corpus_subset, "w:gz"),
        parquet_images(tmp_path / "hf.parquet", [d for _, d in corpus_subset], paths=names, row_group_size=5),
    ]
    p = run_cli("scan", str(folder), *map(str, inputs), "-q", "--no-cache", "--head", "all")
    assert p.returncode in (0, 1), p.stderr.decode()[-2000:]
    records = results(p.stdout)
    plain = {r["path"][len(str(folder)) + 1 :]: r for r in records if "archive" not in r}
    assert sorted(plain) == sorted(names)
    for archive in inputs:
        members = [r for r in records if r.get("archive") == str(archive)]
        stored = [f"{k}.jpg" for k in keys] if archive == inputs[0] else names
        assert [r["member"] for r in members] == stored, archive.name  # archive order, one record per image
        for name, r in zip(names, members):
            expected = plain[name]
            assert r["path"] == f"{archive}::{r['member']}"
            assert verdicts([r]) == verdicts([expected]), (archive.name, name)
            assert r["heads"] == expected["heads"] and r.get("evidence") == expected.get("evidence")
    shard = [r for r in records if r.get("archive") == str(inputs[0])]
    assert [r["key"] for r in shard] == keys  # the WebDataset sample key
    assert [r["member_index"] for r in shard] == [3 * i for i in range(len(names))]  # .json/.txt are not records


def test_hostile_archives_cost_one_record_each_and_the_scan_goes_on(home, tmp_path):
    root = tmp_path / "hostile"
    root.mkdir()
    good = tiny_jpeg(7, (96, 80))
    zip_bomb(root / "a-bomb.zip", inflated=32 << 20)
    overlapping_zip(root / "b-overlap.zip", copies=5)
    encrypted_zip(root / "c-encrypted.zip")
    tar_claiming(root / "d-claims-100gb.tar")
    tar_of(root / "e-full.tar", [(f"{i}.jpg", tiny_jpeg(i)) for i in range(6)])
    truncated(root / "e-full.tar", root / "e-cut.tar", keep=0.5)
    zip_of(root / "f-full.zip", [(f"{i}.png", tiny_png(i)) for i in range(3)])
    truncated(root / "f-full.zip", root / "f-cut.zip", keep=0.7)
    tar_of(root / "g-full.tgz", [(f"{i}.jpg", tiny_jpeg(i, (300, 300))) for i in range(4)], "w:gz")
    truncated(root / "g-full.tgz", root / "g-cut.tgz", keep=0.5)
    nested(root / "h-nested.tar", "zip")
    nested(root / "h-nested.zip", "tar")
    escape = tmp_path / "escaped.jpg"
    tar_of(root / "i-names.tar", [("dup.jpg", good), ("dup.jpg", tiny_jpeg(8)), ("/tmp/abs.jpg", good),
                                  (f"../../{escape.name}", good), ("evil\x1b[2J.jpg", good)])
    rows = parquet_images(tmp_path / "rows.parquet", [tiny_jpeg(i) for i in range(6)], row_group_size=3)
    corrupt_parquet_page(rows, root / "j-corrupt-page.parquet")
    (root / "k-ref.jpg").write_bytes(good)
    parquet_images(root / "k-paths.parquet", [None, None, None, good], paths=["k-ref.jpg", "../x.jpg", "/etc/hosts.jpg", None])
    (root / "l-not-really.zip").write_bytes(b"just text")
    (root / "z-last.jpg").write_bytes(good)

    started = time.monotonic()
    p = run_cli("scan", str(root), "--archives", "-q", "--no-cache", "--max-filesize", str(40 << 20))
    assert p.returncode == 2, p.stderr.decode()[-2000:]
    assert time.monotonic() - started < 120  # bounded work: nothing inflated whole, nothing waited on
    assert p.stderr == b""  # nothing from a file reaches the terminal
    records = results(p.stdout)
    by = {}
    for r in records:
        by.setdefault(os.path.basename(r.get("archive") or r["path"]), []).append(r)

    def codes(name: str) -> list:
        return [(r.get("member"), r["status"], r.get("error_code")) for r in by[name]]

    assert codes("a-bomb.zip") == [("bomb.png", "error", "too_large")]
    assert [c[2] for c in codes("b-overlap.zip")] == ["corrupt"] * 5
    assert codes("c-encrypted.zip") == [("secret.jpg", "error", "encrypted")]
    assert codes("d-claims-100gb.tar") == [("huge.jpg", "error", "too_large"), (None, "error", "truncated")]
    cut_tar = codes("e-cut.tar")
    assert cut_tar[-1][2] == "truncated" and all(s == "real" or s == "fake" for _, s, _ in cut_tar[:-1])
    assert len(cut_tar) <= 4 and [c[2] for c in codes("e-full.tar")] == [None] * 6
    assert codes("f-cut.zip")[0][2] == "truncated" and len(by["f-cut.zip"]) == 1
    cut_tgz = codes("g-cut.tgz")
    assert cut_tgz[-1][2] == "truncated" and len(cut_tgz) <= 4
    for name, inner in (("h-nested.tar", "inner.zip"), ("h-nested.zip", "inner.tar")):
        assert [(m, s) for m, s, _ in codes(name)] == [(inner, "skipped"), ("outer.jpg", codes(name)[1][1])]
        assert codes(name)[0][2] == "nested_archive" and codes(name)[1][1] in ("real", "fake")
    names = by["i-names.tar"]
    assert [r["member"] for r in names] == ["dup.jpg", "dup.jpg", "/tmp/abs.jpg", "../../escaped.jpg", "evil\x1b[2J.jpg"]
    assert [r["member_index"] for r in names] == [0, 1, 2, 3, 4]
    assert names[0]["sha256"] != names[1]["sha256"] and all(r["status"] in ("real", "fake") for r in names)
    assert not escape.exists() and not Path("/tmp/abs.jpg").exists()  # names are labels, never paths
    # The unreadable row group is one record at its first row, whatever rows it declares.
    assert [(r["member_index"], r.get("error_code")) for r in by["j-corrupt-page.parquet"]] == [(0, "corrupt")] + [(i, None) for i in (3, 4, 5)]
    assert [c[2] for c in codes("k-paths.parquet")] == [None, "unsafe_path", "unsafe_path", None]
    assert by["k-paths.parquet"][0]["sha256"] == by["k-paths.parquet"][3]["sha256"]  # read beside the Parquet file
    assert codes("l-not-really.zip")[0][2] in ("truncated", "corrupt")
    assert by["z-last.jpg"][0]["status"] in ("real", "fake")  # the scan went on


def test_a_walk_opens_archives_only_when_asked(home, tmp_path):
    (tmp_path / "d").mkdir()
    tar_of(tmp_path / "d" / "s.tar", [("a.jpg", tiny_jpeg(1)), ("b.jpg", tiny_jpeg(2))])
    walked = results(run_cli("scan", str(tmp_path / "d"), "-q", "--no-cache").stdout)
    assert [(r["status"], r["error_code"]) for r in walked] == [("skipped", "not_an_image")]  # as before
    opened = results(run_cli("scan", str(tmp_path / "d"), "-q", "--no-cache", env={"CODESCAN_ARCHIVES": "1"}).stdout)
    assert [r["member"] for r in opened] == ["a.jpg", "b.jpg"]
    uri = f"file://{tmp_path / 'd'}"  # through pyarrow's random-access files, as s3:// and gs:// are read
    remote = results(run_cli("scan", uri, "--archives", "-q", "--no-cache").stdout)
    assert [r["archive"] for r in remote] == [f"{uri}/s.tar"] * 2 and verdicts(remote) == verdicts(opened)


def test_resume_keys_on_member_index_and_tables_carry_the_member(home, tmp_path):
    """Duplicate names: a resume that keyed on path would drop the second dup.jpg."""
    shard = tar_of(tmp_path / "s.tar", [("dup.jpg", tiny_jpeg(i)) for i in range(5)] + [("z.png", tiny_png(9))])
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(tiny_jpeg(11))
    args = ("scan", str(plain), str(shard), "-q", "--no-cache")
    full = run_cli(*args)
    out = tmp_path / "out.jsonl"
    lines = full.stdout.decode().splitlines()
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])  # header, 3 results, a torn line
    again = run_cli(*args, "--resume", str(out))
    assert again.returncode == full.returncode, again.stderr.decode()[-2000:]
    assert out.read_text().splitlines()[:-1] == lines[:-1]

    forged = tmp_path / "forged.jsonl"  # a member line without its member_index: refused in one line, not a crash
    forged.write_text(lines[0] + "\n" + json.dumps({"type": "result", "path": "x", "status": "real", "archive": "s.tar"}) + "\n")
    refused = run_cli(*args, "--resume", str(forged))
    assert refused.returncode == 2 and b"line 2 is not a codescan record" in refused.stderr and b"internal error" not in refused.stderr
    forged.unlink()

    csv_out, pq_out = tmp_path / "v.csv", tmp_path / "v.parquet"
    assert run_cli(*args, "-o", str(csv_out)).returncode == full.returncode
    assert run_cli(*args, "-o", str(pq_out), "--head", "all").returncode == full.returncode
    header, *rows = csv_out.read_text().splitlines()
    assert header.split(",")[11:15] == ["archive", "member", "member_index", "key"]
    assert rows[0].split(",")[11:15] == ["", "", "", ""]  # a plain file: empty, same columns
    assert rows[2].split(",")[11:15] == [str(shard), "dup.jpg", "1", "dup"]

    table = pq.read_table(pq_out)
    expected = results(full.stdout)
    assert table.column("path").to_pylist() == [r["path"] for r in expected]
    assert table.column("member_index").to_pylist() == [r.get("member_index") for r in expected]
    assert table.column("score").to_pylist() == pytest.approx([r["score"] for r in expected])
    assert {"score_linear", "status_knn", "combined"} <= set(table.column_names)
    meta = pq.read_metadata(pq_out).metadata
    assert json.loads(meta[b"codescan.header"])["schema_version"] == 3
    assert json.loads(meta[b"codescan.summary"])["files"] == len(expected)
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "plain.jpg", "s.tar", "v.csv", "v.parquet"]  # no temp left

    refused = run_cli(*args, "--format", "parquet")
    assert refused.returncode == 2 and b"-o FILE.parquet" in refused.stderr


def test_parquet_image_column_is_found_or_named():
    import pyarrow as pa

    hf = pa.schema([("text", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])
    assert image_column(hf, None) == ("image", True)
    two = pa.schema([("thumb", pa.binary()), ("jpg", pa.binary()), ("key", pa.string())])
    assert image_column(two, None) == ("jpg", False)
    assert image_column(two, "thumb") == ("thumb", False)
    for schema, named in ((pa.schema([("a", pa.binary()), ("b", pa.binary())]), None), (two, "key"), (two, "nope")):
        with pytest.raises(ReaderError):
            image_column(schema, named)


def test_members_overlap_and_keys():
    class Info:
        def __init__(self, offset: int, size: int) -> None:
            self.header_offset, self.compress_size = offset, size

    assert _overlaps([Info(0, 100), Info(130, 10), Info(170, 5)]) == set()
    assert _overlaps([Info(0, 100), Info(0, 100), Info(500, 1)]) == {0, 1}
    assert _overlaps([Info(0, 100), Info(60, 10)]) == {0, 1}
    assert webdataset_key("00042/000420001.jpg") == "00042/000420001"
    assert webdataset_key("a.b.seg.png") == "a"


def test_a_reader_that_crashes_or_stalls_costs_its_input_only():
    with pytest.raises(ReaderError) as crashed:
        list(isolated(os._exit, 3))
    assert crashed.value.code == "corrupt"
    with pytest.raises(ReaderError) as stalled:
        list(isolated(time.sleep, 30, idle=1.0))
    assert stalled.value.code == "decode_timeout"


def test_tar_member_bytes_are_read_in_place(tmp_path):
    """The worker reads a plain tar's member at its offset: no copy, same bytes."""
    from codescan.inputs.fetch import read_member
    from codescan.inputs.sources import expand
    from codescan.inputs.walk import Entry, WalkOptions

    data = [tiny_jpeg(i) for i in range(3)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i, d in enumerate(data):
            info = tarfile.TarInfo(f"{i}.jpg")
            info.size = len(d)
            tf.addfile(info, io.BytesIO(d))
    path = tmp_path / "t.tar"
    path.write_bytes(buf.getvalue())
    entries = list(expand(Entry(str(path), os.fsencode(path)), WalkOptions()))
    assert all(e.span is not None and e.data is None for e in entries)
    assert [read_member(e, 1 << 20) for e in entries] == data
    shutil.rmtree(tmp_path)
