"""Hostile metadata (issue 13, item 2 / security kit F3): evidence is best-effort, linear and bounded.

Every file is built here. The readers must never fail a file, never take time beyond linear in
the metadata, and never put more than a bounded, control-free amount of text into a record,
whatever container, carrier or syntax brings the metadata.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from conftest import CODESCAN
from PIL import Image
from provenance_files import (
    A1111,
    COMFY_PROMPT,
    image,
    jpeg,
    png,
    user_comment_unicode,
    webp,
)

from codescan.core.records import Evidence
from codescan.core.textsafe import strip_controls
from codescan.decoding.decode import DecodeLimits, decode_bytes
from codescan.decoding.examine import ExamineConfig, Examined, Examiner
from codescan.evidence import metadata as evidence
from codescan.evidence.containers import (
    MAX_TEXT,
    MAX_TOTAL_TEXT,
    read_metadata,
)
from codescan.evidence.metadata import (
    MAX_BYTES,
    MAX_DETAIL,
    MAX_GENERATOR,
    MAX_ITEMS,
    Findings,
    metadata_evidence,
)
from codescan.inputs.walk import Entry

LINEAR_BUDGET_S = 2.0  # the linear parsers take milliseconds here; the quadratic ones took minutes


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def with_chunks(data: bytes, *chunks: bytes) -> bytes:
    """`chunks` inserted before IEND."""
    end = data.rindex(b"IEND") - 4
    return data[:end] + b"".join(chunks) + data[end:]


def text(key: str, value: str) -> bytes:
    return chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))


def itxt(key: str, value: str, compressed: bool = True) -> bytes:
    body = zlib.compress(value.encode(), 9) if compressed else value.encode()
    return chunk(b"iTXt", key.encode() + b"\x00" + bytes([compressed, 0]) + b"\x00\x00" + body)


def webp_exif(user_comment: bytes) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = user_comment
    buf = io.BytesIO()
    image().save(buf, format="WEBP", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def xmp_png(base: bytes, unit: str, packets: int) -> bytes:
    """`packets` compressed XMP packets of 1 MiB, each `unit` repeated: the kit's f3c file."""
    packet = itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + unit * ((1 << 20) // len(unit) - 1) + "</x:xmpmeta>")
    return with_chunks(base, *[packet] * packets)


def timed(data: bytes) -> tuple[list[Evidence], float]:
    start = time.perf_counter()
    found = metadata_evidence(data)
    return found, time.perf_counter() - start


# --------------------------------------------------------------------------- a reader that raises


@pytest.mark.parametrize(
    "graph",
    [
        json.dumps({"\u00b2": {"class_type": "KSampler"}, "1": {}}),  # kit f3a: isdigit() but int() raises
        json.dumps({"\u2460": {}, "\u1369": {"class_type": "KSampler"}, "2": {}}),  # circled one, Ethiopic one
        json.dumps({"1" * 5000: {"class_type": "KSampler"}, "2": {}}),  # past int()'s 4300-digit limit
    ],
    ids=["superscript", "other-digits", "5000-digits"],
)
@pytest.mark.parametrize("carrier", ["tEXt", "iTXt", "iTXt-raw-utf8"])
def test_comfyui_node_ids_int_refuses(graph, carrier):
    if carrier == "tEXt":
        data = with_chunks(png(), text("prompt", graph))
    else:
        raw = json.dumps(json.loads(graph), ensure_ascii=False) if carrier == "iTXt-raw-utf8" else graph
        data = with_chunks(png(), itxt("prompt", raw, compressed=carrier == "iTXt"))
    (found,) = metadata_evidence(data)
    assert found.kind == "comfyui" and found.conclusive  # the graph is still read, and its sampler seen


def test_comfyui_numeric_node_order_is_kept():
    graph = {"10": {"inputs": {"ckpt_name": "second.safetensors"}}, "9": {"inputs": {"ckpt_name": "first.safetensors"}}}
    (found,) = metadata_evidence(png({"prompt": json.dumps(graph)}))
    assert "models first.safetensors, second.safetensors" in found.detail


def test_a_reader_that_raises_costs_only_its_own_evidence(monkeypatch):
    data = with_chunks(png({"parameters": A1111}), itxt("XML:com.adobe.xmp", '<x xmp:CreatorTool="Midjourney 6"/>'))
    assert [e.kind for e in metadata_evidence(data)] == ["a1111", "software"]

    def broken(*args):
        raise ZeroDivisionError("a parser bug")

    monkeypatch.setattr(evidence, "family", broken)
    assert [e.kind for e in metadata_evidence(data)] == ["software"]
    monkeypatch.setattr(evidence, "ai_software", broken)
    assert metadata_evidence(data) == []


def test_a_c2pa_reader_that_raises_costs_only_its_own_evidence():
    data = with_chunks(png({"parameters": A1111}), chunk(b"caBX", b"jumb c2pa manifest"))

    def broken(data: bytes, mime: str) -> Evidence | None:
        raise RecursionError("deeply nested manifest")

    assert [e.kind for e in metadata_evidence(data, broken, "image/png")] == ["a1111"]


def test_a_watermark_detector_that_raises_does_not_fail_the_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png({"prompt": COMFY_PROMPT}))
    examiner = Examiner(ExamineConfig(evidence="metadata"))

    def broken(data: bytes) -> list[Evidence]:
        raise ValueError("odd image shape")

    examiner.watermark = broken
    outcome = examiner(Entry(display=str(path), path=os.fsencode(path)))
    assert isinstance(outcome, Examined) and outcome.decoded is not None
    assert [e.kind for e in outcome.evidence or ()] == ["comfyui"]


# --------------------------------------------------------------------------- linear time

SETTINGS = "a prompt\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1"
HOSTILE_LINES = {
    "whitespace-run": "Steps: 20, Sampler: Euler," + " " * 20_000 + ",x",  # kit f3b; minutes with the old regex
    "whitespace-after-colon": SETTINGS + ", Model:" + " " * 20_000 + "x",
    "unclosed-quotes": SETTINGS + ', a: "' * 20_000,
    "escaped-quotes": SETTINGS + ', a: "' + '\\"' * 100_000,
    "empty-items": SETTINGS + "," * 200_000,
    "colons": SETTINGS + ", " + ":" * 200_000,
    "long-key": SETTINGS + ", " + "k" * 200_000 + ": v",
}


@pytest.mark.parametrize("line", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
@pytest.mark.parametrize("carrier", ["png-tEXt", "png-iTXt", "jpeg-exif", "webp-exif"])
def test_a1111_settings_parse_in_linear_time(line, carrier):
    params = "a prompt\n" + line
    if carrier == "png-tEXt":
        data = with_chunks(png(), text("parameters", params))
    elif carrier == "png-iTXt":
        data = with_chunks(png(), itxt("parameters", params))
    else:
        comment = user_comment_unicode(params[:30_000])  # an EXIF block is at most 64 KiB
        data = jpeg(user_comment=comment) if carrier == "jpeg-exif" else webp_exif(comment)
    found, seconds = timed(data)
    assert seconds < LINEAR_BUDGET_S, f"{seconds:.1f}s"
    assert [e.kind for e in found] in ([], ["a1111"])


def test_a1111_settings_keep_quoted_commas_and_last_values():
    line = 'Steps: 30, Lora hashes: "Model: x, Seed: 9", Sampler: Euler a, Model: sd_xl_base_1.0, Steps: 99'
    (found,) = metadata_evidence(png({"parameters": "p\n" + line}))
    assert found.detail == "PNG text 'parameters': Steps 99, Sampler Euler a, Model sd_xl_base_1.0"
    assert found.generator == "SDXL"


@pytest.mark.parametrize(
    "xmp",
    [
        '<x CreatorTool="Photoshop"/>' * 30_000,  # never an AI tool: every value looked at
        "digitalsourcetype/trainedAlgorithmicMedia " * 20_000,
        "CreatorTool=" * 80_000,
    ],
    ids=["creator-tools", "source-types", "bare-keys"],
)
def test_xmp_readers_are_linear(xmp):
    found, seconds = timed(with_chunks(png(), itxt("XML:com.adobe.xmp", xmp)))
    assert seconds < LINEAR_BUDGET_S, f"{seconds:.1f}s"
    assert len(found) <= 1


# --------------------------------------------------------------------------- bounded evidence


def _xmp_carriers(xmp: str) -> dict[str, bytes]:
    return {
        "png-iTXt": png(itxt={"XML:com.adobe.xmp": xmp}),
        "jpeg-app1": jpeg(xmp=xmp),
        "webp-xmp": webp(xmp=xmp),
    }


def assert_bounded(found: list[Evidence]) -> None:
    assert len(found) <= MAX_ITEMS <= 64
    assert len(set(found)) == len(found)
    assert sum(len(e.detail.encode()) + len((e.generator or "").encode()) for e in found) <= MAX_BYTES
    for e in found:
        assert len(e.detail) <= MAX_DETAIL and len(e.generator or "") <= MAX_GENERATOR
        json.dumps(e.to_dict(), ensure_ascii=False).encode()  # no lone surrogate either


@pytest.mark.parametrize("carrier", ["png-iTXt", "jpeg-app1", "webp-xmp"])
def test_identical_items_merge(carrier):
    data = _xmp_carriers('<x xmp:CreatorTool="Midjourney"/>' * 1500)[carrier]
    found = metadata_evidence(data)
    assert [(e.kind, e.generator) for e in found] == [("software", "Midjourney")]


@pytest.mark.parametrize("carrier", ["png-iTXt", "jpeg-app1", "webp-xmp"])
def test_distinct_items_are_capped(carrier):
    data = _xmp_carriers("".join(f'<x xmp:CreatorTool="DALL-E 3 build {i}"/>' for i in range(1000)))[carrier]
    found = metadata_evidence(data)
    assert_bounded(found)
    assert found and all(e.generator == "DALL-E 3" for e in found)


def test_kit_f3c_packets_give_one_item_quickly():
    found, seconds = timed(xmp_png(png(), '<x CreatorTool="Midjourney"/>', 40))
    assert seconds < LINEAR_BUDGET_S, f"{seconds:.1f}s"
    assert [(e.kind, e.generator) for e in found] == [("software", "Midjourney")]


def test_findings_cap_items_and_bytes():
    many = [Evidence("software", f"XMP CreatorTool: tool {i} " + "x" * 250, "tool") for i in range(200)]
    found = Findings(many).items()
    assert_bounded(found)
    assert found == many[: len(found)] and len(found) >= 16  # the first ones, in order


ESC = "\x1b]0;owned-title\x07\x1b[2J\x9b31m\u202egnp.exe\u2066\x7f"


def test_quoted_text_is_stripped_of_controls_and_cut():
    model = f"=HYPERLINK()\x00{ESC}" + "M" * 2000  # kit f7's a1111_model_escape
    files = [
        with_chunks(png(), itxt("parameters", f"p\nSteps: 20, Sampler: Euler{ESC}, Seed: 1, Model: {model}")),
        png({"Software": "NovelAI", "Source": f"NovelAI {ESC}" + "S" * 5000}),
        png({"invokeai_metadata": json.dumps({"model": {"name": model}})}),
        png({"parameters": json.dumps({"base_model": model, "version": f"Fooocus {ESC}" + "v" * 900})}),
        png({"prompt": json.dumps({"1": {"class_type": "KSampler", "inputs": {"ckpt_name": "\ud800" + model}}})}),
        jpeg(software=f"Midjourney {ESC}" + "z" * 3000),
        png(itxt={"XML:com.adobe.xmp": f'<x xmp:CreatorTool="Midjourney {ESC}"/>'}),
    ]
    for data in files:
        found = metadata_evidence(data)
        assert found, data[:40]
        assert_bounded(found)
        for e in found:
            for quoted in (e.detail, e.generator or ""):
                assert strip_controls(quoted) == quoted, quoted


def test_text_per_file_is_bounded():
    bomb = zlib.compress(b"A" * MAX_TEXT, 9)
    same_key = [chunk(b"zTXt", b"Comment\x00\x00" + bomb)] * 100
    many_keys = [chunk(b"zTXt", b"k%d\x00\x00" % i + bomb) for i in range(100)]
    xmps = [chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + bomb)] * 100
    for chunks in (same_key, many_keys, xmps):
        start = time.perf_counter()
        meta = read_metadata(with_chunks(png(), *chunks))
        seconds = time.perf_counter() - start
        kept = sum(len(v) for v in meta.text.values()) + sum(len(x) for x in meta.xmp)
        assert kept <= MAX_TOTAL_TEXT and seconds < LINEAR_BUDGET_S, (kept, seconds)


# --------------------------------------------------------------------------- the scan


def _scan_peak(folder) -> tuple[list[str], int, bytes]:
    """JSONL lines and the peak resident set (KiB) of the scan process, measured in a fresh parent."""
    code = (
        "import resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True, timeout=300); "
        "sys.stderr.buffer.write(p.stderr); sys.stdout.buffer.write(p.stdout); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)"
    )
    args = [CODESCAN, "scan", str(folder), "-q", "--no-cache", "--decode-timeout", "5"]
    p = subprocess.run([sys.executable, "-P", "-c", code, *args], capture_output=True, timeout=400)
    peak_kb = int(p.stderr.decode().split()[-1])
    return p.stdout.decode().splitlines(), peak_kb, p.stderr


def test_scan_judges_hostile_files_like_their_plain_twins(home, tmp_path):
    """Kit F3: each hostile file has a twin with the same pixels and no metadata; both must
    get the same status and score, inside --decode-timeout 5, in a small record and a flat scan."""
    folder = tmp_path / "f3"
    folder.mkdir()
    plain_png, plain_jpg = png(seed=3), jpeg(seed=4)
    spaces_png = "p\nSteps: 20, Sampler: Euler," + " " * 200_000 + ",x"  # kit f3b, both files
    spaces_jpg = user_comment_unicode("p\nSteps: 20, Sampler: Euler," + " " * 32_000 + ",x")
    hostile = {
        "comfy_isdigit.png": with_chunks(plain_png, text("prompt", json.dumps({"\u00b2": {"class_type": "KSampler"}}))),
        "comfy_isdigit_itxt.png": with_chunks(plain_png, itxt("prompt", '{"\u00b2": {}, "3": {}}', compressed=False)),
        "comfy_longdigits.png": with_chunks(plain_png, text("prompt", json.dumps({"1" * 5000: {}, "2": {}}))),
        "a1111_ws.png": with_chunks(plain_png, text("parameters", spaces_png)),
        "a1111_ws.jpg": jpeg(user_comment=spaces_jpg, seed=4),
        "xmp_creatortool.png": xmp_png(plain_png, '<x CreatorTool="Midjourney"/>', 40),
    }
    for name, data in hostile.items():
        (folder / name).write_bytes(data)
    (folder / "twin.png").write_bytes(plain_png)
    (folder / "twin.jpg").write_bytes(plain_jpg)

    lines, peak_kb, stderr = _scan_peak(folder)
    records = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in lines[1:-1]}
    assert set(records) == {*hostile, "twin.png", "twin.jpg"}, stderr.decode()[-2000:]
    for name in hostile:
        record, twin = records[name], records["twin" + name[name.rindex("."):]]
        assert (record["status"], record.get("score")) == (twin["status"], twin["score"]), record
        assert len(record["evidence"]) <= MAX_ITEMS
    assert max(len(line.encode()) for line in lines) < 64 << 10
    assert [e["generator"] for e in records["xmp_creatortool.png"]["evidence"]] == ["Midjourney"]
    assert peak_kb < 600 << 10, f"peak RSS {peak_kb} KiB"


@pytest.mark.parametrize("where", ["one-4MiB-iTXt", "65-1MiB-zTXt"])
def test_png_text_pillow_refuses_does_not_fail_the_pixels(where):
    """Pillow refuses a whole PNG whose text passes its own limits; decode hands it the PNG without text."""
    plain = png(seed=3)
    if where == "one-4MiB-iTXt":
        data = with_chunks(plain, itxt("XML:com.adobe.xmp", "<x/>" * (1 << 20)))
    else:
        data = with_chunks(plain, *[chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * MAX_TEXT, 9))] * 65)
    assert np.array_equal(decode_bytes(data, DecodeLimits()).crop, decode_bytes(plain, DecodeLimits()).crop)
