"""Archives whose headers lie (security round 2, R6; the "not yet tried" cases of #23).

Each test builds its hostile input here and lists it the way a scan does (``expand``: the confined
listing child); a member is read only when its entry carries a span, and then by ``read_member``,
as a decode worker reads it. No model is loaded.
"""

from __future__ import annotations

import os
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from archive_kit import (
    flat_png,
    gnu_sparse_tar,
    patch_end,
    patch_local,
    shared_kernel_zip,
    spread_kernel_zip,
    stored_zip64,
    streamed_zip,
    tar_header_claiming,
    tiny_jpeg,
    tiny_png,
    zip_of,
)

from codescan.inputs.archives import list_members
from codescan.inputs.fetch import MAX_RATIO, read_member
from codescan.inputs.isolated import ReaderError
from codescan.inputs.sources import expand
from codescan.inputs.tar import MAX_TAR_HEADER
from codescan.inputs.walk import Entry, WalkOptions


def listed(path: Path) -> list[Entry]:
    return list(expand(Entry(str(path), os.fsencode(path)), WalkOptions()))


def outcome(entries: list[Entry]) -> list[tuple[str | None, str | None]]:
    """(member, error code) per entry; None as member for the archive's own error record."""
    return [(e.origin.member if e.origin else None, e.error[0] if e.error else None) for e in entries]


def test_r6_members_sharing_one_deflate_kernel_are_all_refused(tmp_path):
    plain = flat_png()
    for names_agree in (True, False):  # the local names match (only the data ranges tell), or not (the kit's file)
        path = shared_kernel_zip(tmp_path / f"shared-{names_agree}.zip", 40, names_agree, plain)
        entries = listed(path)
        assert len(entries) == 40 and 40 * len(plain) > 500 * os.path.getsize(path)  # a 600:1 file
        assert [e.error[0] for e in entries] == ["corrupt"] * 40, entries[0].error  # not one member read
    assert "overlap" in listed(tmp_path / "shared-True.zip")[1].error[1]


def test_disjoint_small_kernels_are_bounded_by_the_archive_as_a_whole(tmp_path):
    plain = flat_png()
    path = spread_kernel_zip(tmp_path / "spread.zip", 40, plain)
    entries = listed(path)
    read = [e for e in entries if e.span is not None]
    budget = MAX_RATIO * os.path.getsize(path)
    assert 0 < len(read) <= budget // len(plain) < 40  # each member passes alone; together they stop at 200x the file
    assert {e.error[0] for e in entries if e.span is None} == {"too_large"}
    assert read_member(read[0], 1 << 30) == plain


def test_a_local_header_that_disagrees_with_the_central_directory_is_not_read(tmp_path):
    members = [(f"{i}.png", tiny_png(i)) for i in range(8)]
    path = zip_of(tmp_path / "lying.zip", members, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    patch_local(path, 0, name=b"X.png")
    patch_local(path, 1, method=0)
    patch_local(path, 2, csize=infos[2].compress_size + 1)
    patch_local(path, 3, usize=infos[3].file_size - 1)
    patch_local(path, 4, crc=infos[4].CRC ^ 1)
    patch_local(path, 5, flags=0x1)  # encrypted, says the local header only
    patch_local(path, 6, flags=0x8)  # a data descriptor the central directory does not know of
    entries = listed(path)
    assert outcome(entries) == [(f"{i}.png", "corrupt") for i in range(7)] + [("7.png", None)]
    assert "local header" in entries[0].error[1]
    assert read_member(entries[7], 1 << 20) == members[7][1]


def test_data_descriptor_members_are_read_and_checked(tmp_path):
    members = [("a.png", tiny_png(1)), ("b.jpg", tiny_jpeg(2)), ("c.png", tiny_png(3))]
    good = streamed_zip(tmp_path / "streamed.zip", members)
    stored = streamed_zip(tmp_path / "streamed-stored.zip", members, zipfile.ZIP_STORED)
    for path in (good, stored):
        entries = listed(path)
        assert outcome(entries) == [(n, None) for n, _ in members]
        assert [read_member(e, 1 << 20) for e in entries] == [d for _, d in members]

    raw = bytearray(good.read_bytes())  # the second member's data descriptor says another CRC
    with zipfile.ZipFile(good) as zf:
        b = zf.infolist()[1]
    descriptor = raw.index(b"PK\x07\x08", b.header_offset + 30 + len(b.filename) + b.compress_size - 1)
    raw[descriptor + 4] ^= 0xFF
    (tmp_path / "bad-descriptor.zip").write_bytes(bytes(raw))
    assert outcome(listed(tmp_path / "bad-descriptor.zip")) == [("a.png", None), ("b.jpg", "corrupt"), ("c.png", None)]


def test_zip64_sizes_and_offsets_that_do_not_fit_the_file(tmp_path):
    members = [(f"{i}.png", tiny_png(i)) for i in range(4)]
    genuine = listed(stored_zip64(tmp_path / "z64.zip", members))
    assert outcome(genuine) == [(n, None) for n, _ in members]
    assert [read_member(e, 1 << 20) for e in genuine] == [d for _, d in members]

    size = len(members[0][1])
    lies = {0: {"csize": 1 << 40, "usize": 1 << 40}, 1: {"offset": 1 << 62}, 2: {"csize": size + 64, "usize": size + 64}}
    lying = listed(stored_zip64(tmp_path / "z64-lying.zip", members, central_lies=lies, local_lies={3: {"csize": size - 1}}))
    assert outcome(lying) == [(n, "corrupt") for n, _ in members]
    for end in ({"cd_size": 1 << 40}, {"cd_offset": 1 << 40}, {"cd_size": 46}):
        refused = listed(stored_zip64(tmp_path / "z64-end.zip", members, end_lies=end))
        assert outcome(refused) == [(None, "corrupt")], end


@pytest.mark.parametrize("claimed", [1_000_000, 1 << 32, 2])
def test_a_zip_claiming_more_entries_than_it_holds_is_refused_at_once(tmp_path, claimed):
    members = [(f"{i}.png", tiny_png(i)) for i in range(3)]
    path = stored_zip64(tmp_path / "claims.zip", members, end_lies={"entries": claimed})
    started = time.monotonic()
    entries = listed(path)
    assert outcome(entries) == [(None, "corrupt")] and "claims" in entries[0].error[1]
    assert time.monotonic() - started < 5  # no loop over the claimed count


def test_classic_end_records_that_disagree_with_the_central_directory(tmp_path):
    members = [(f"{i}.png", tiny_png(i)) for i in range(3)]
    for patch in ({"entries": 65535}, {"entries": 2}, {"cd_size": 10}, {"cd_size": 1 << 31}):
        path = patch_end(zip_of(tmp_path / "e.zip", members), **patch)
        assert outcome(listed(path)) == [(None, "corrupt")], patch


def test_a_genuine_zip_of_many_members_lists_them_all(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:  # past 65535 entries: zip64 end record
        for i in range(66_000):
            zf.writestr(f"{i:05d}.txt", b"")
        zf.writestr("last.png", tiny_png(1))
    entries = listed(path)
    assert outcome(entries) == [("last.png", None)] and entries[0].origin.member_index == 66_000
    assert read_member(entries[0], 1 << 20) == tiny_png(1)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
@pytest.mark.parametrize("kind", [b"L", b"K", b"x", b"g"])
def test_tar_extended_headers_claiming_huge_sizes_are_refused_before_reading(tmp_path, kind, mode):
    name = "claims.tgz" if mode == "w:gz" else "claims.tar"
    path = tar_header_claiming(tmp_path / name, kind, 1 << 40, tiny_jpeg(1), tiny_jpeg(2), mode)
    entries = listed(path)
    assert outcome(entries) == [("a.jpg", None), (None, "too_large")]
    assert "header claims" in entries[1].error[1]


def test_tar_extended_header_claims_allocate_nothing(tmp_path):
    """In process, without the listing child's memory limit: a 2 GiB claim must not become a 2 GiB read."""
    path = tar_header_claiming(tmp_path / "claims.tar", b"L", 2 << 30, tiny_jpeg(1), tiny_jpeg(2))
    tracemalloc.start()
    try:
        with pytest.raises(ReaderError, match="header claims"):
            list(list_members(Entry(str(path), os.fsencode(path)), "tar", WalkOptions(), False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_TAR_HEADER


@pytest.mark.parametrize("style", ["old", "0.1", "1.0", "1.0-endless"])
def test_gnu_sparse_members_are_refused_and_the_next_member_is_read(tmp_path, style):
    after = tiny_jpeg(2)
    path = gnu_sparse_tar(tmp_path / "sparse.tar", tiny_jpeg(1), 300_000, after, style)
    entries = listed(path)
    assert outcome(entries) == [("s.jpg", "unsupported_format"), ("b.jpg", None)]
    assert read_member(entries[1], 1 << 20) == after
