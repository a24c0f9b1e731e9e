"""Provenance evidence: generator parameters, EXIF, XMP and C2PA, on files the tests build and
on the labelled corpus; the `combined` field and the exit code it drives."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter

import pytest
from conftest import LABELED, run_cli
from provenance_files import (
    A1111,
    CAPTURE,
    COMFY_PROMPT,
    COMFY_WORKFLOW,
    TRAINED,
    c2pa_sign,
    jpeg,
    png,
    png_text_after_idat,
    user_comment_unicode,
    webp,
    xmp_source_type,
)

from codescan.evidence.containers import MAX_TEXT, read_metadata
from codescan.evidence.generators import family
from codescan.evidence.metadata import metadata_evidence
from codescan.evidence.provenance import c2pa_reader


def kinds(found) -> list[tuple[str, str | None, bool]]:
    return [(e.kind, e.generator, e.conclusive) for e in found]


def test_a1111_png_parameters():
    found = metadata_evidence(png({"parameters": A1111}))
    assert kinds(found) == [("a1111", "SDXL", True)]
    detail = found[0].detail
    assert "Steps 30" in detail and "Sampler DPM++ 2M Karras" in detail and "Version v1.7.0" in detail
    assert "lighthouse" not in detail and "blurry" not in detail  # never quote the prompt


def test_a1111_parameters_in_exif_user_comment():
    found = metadata_evidence(jpeg(user_comment=user_comment_unicode(A1111)))
    assert kinds(found) == [("a1111", "SDXL", True)] and "EXIF UserComment" in found[0].detail


def test_parameters_that_are_not_a1111_are_not_evidence():
    assert metadata_evidence(png({"parameters": "exposure 1/250s, f/8"})) == []
    assert metadata_evidence(png({"parameters": "Steps: 3 to happiness"})) == []


@pytest.mark.parametrize("where", ["tEXt", "iTXt-zip", "after-IDAT"])
def test_comfyui_graph(where):
    if where == "tEXt":
        data = png({"prompt": COMFY_PROMPT, "workflow": COMFY_WORKFLOW})
    elif where == "iTXt-zip":
        data = png(itxt={"prompt": COMFY_PROMPT})
    else:
        data = png_text_after_idat("prompt", COMFY_PROMPT)
    found = metadata_evidence(data)
    assert kinds(found) == [("comfyui", "FLUX.1 [dev]", True)]
    assert "flux1-dev-fp8.safetensors" in found[0].detail


def test_comfyui_graph_without_sampler_is_not_conclusive():
    graph = json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                        "2": {"class_type": "ImageScaleBy", "inputs": {"scale_by": 2}}})
    found = metadata_evidence(png({"prompt": graph}))
    assert kinds(found) == [("comfyui", None, False)] and "no sampler" in found[0].detail


def test_novelai_invokeai_fooocus():
    assert kinds(metadata_evidence(png({"Software": "NovelAI", "Source": "NovelAI Diffusion V4 5AB81C7C"}))) == [
        ("novelai", "NovelAI Diffusion V4 5AB81C7C", True)
    ]
    invoke = json.dumps({"model": {"name": "stable-diffusion-xl-base-1-0"}, "steps": 30})
    assert kinds(metadata_evidence(png({"invokeai_metadata": invoke}))) == [("invokeai", "SDXL", True)]
    fooocus = json.dumps({"base_model": "juggernautXL_v8Rundiffusion.safetensors", "version": "Fooocus v2.5.0"})
    assert kinds(metadata_evidence(png({"parameters": fooocus, "fooocus_scheme": "fooocus"}))) == [
        ("fooocus", "juggernautXL_v8Rundiffusion", True)
    ]


def test_exif_software_names_only_ai_generators():
    assert kinds(metadata_evidence(jpeg(software="Adobe Firefly"))) == [("software", "Adobe Firefly", True)]
    assert kinds(metadata_evidence(jpeg(software="Midjourney v6"))) == [("software", "Midjourney", True)]
    for editor in ("Adobe Photoshop 25.0 (Windows)", "GIMP 2.10.36", "Picasa", "Imagen Editor 3"):
        assert metadata_evidence(jpeg(software=editor)) == [], editor


@pytest.mark.parametrize("attribute", [True, False])
def test_xmp_digital_source_type(attribute):
    found = metadata_evidence(jpeg(xmp=xmp_source_type(TRAINED, attribute)))
    assert kinds(found) == [("digital_source_type", None, True)] and "trainedAlgorithmicMedia" in found[0].detail
    assert metadata_evidence(jpeg(xmp=xmp_source_type(CAPTURE, attribute))) == []
    composite = TRAINED.replace("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")
    assert kinds(metadata_evidence(webp(xmp=xmp_source_type(composite)))) == [("digital_source_type", None, True)]
    algorithmic = TRAINED.replace("trainedAlgorithmicMedia", "algorithmicMedia")
    assert kinds(metadata_evidence(jpeg(xmp=xmp_source_type(algorithmic)))) == [("digital_source_type", None, False)]


def test_ztxt_bomb_is_bounded():
    import struct
    import zlib

    bomb = zlib.compress(b"A" * (64 << 20), 9)  # 64 MiB of text in ~64 KiB
    body = b"Comment\x00\x00" + bomb
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    data = png()
    data = data[:33] + chunk + data[33:]  # right after IHDR
    meta = read_metadata(data)
    assert len(meta.text["Comment"]) == MAX_TEXT


def test_truncated_and_garbled_containers_never_raise():
    rng = random.Random(7)
    seeds = [
        png({"parameters": A1111, "prompt": COMFY_PROMPT}),
        jpeg(software="Adobe Firefly", user_comment=user_comment_unicode(A1111), xmp=xmp_source_type(TRAINED)),
        webp(xmp=xmp_source_type(TRAINED)),
    ]
    for i in range(3000):
        data = bytearray(rng.choice(seeds))
        if i % 3 == 0:
            data = data[: rng.randrange(len(data))]
        for _ in range(rng.randrange(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        metadata_evidence(bytes(data))  # must not raise: any escape is a bug in a parser


def test_family_names():
    assert family("sd_xl_turbo_1.0_fp16.safetensors") == "SDXL Turbo"
    assert family("models/checkpoints/v1-5-pruned-emaonly.ckpt") == "Stable Diffusion 1.5"
    assert family("sd3.5_large_fp8_scaled.safetensors") == "Stable Diffusion 3.5"
    assert family("dreamshaper_8.safetensors") == "dreamshaper_8"


# --------------------------------------------------------------------------- C2PA

c2pa = pytest.importorskip("c2pa", reason="the c2pa extra is part of the test install")


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_c2pa_signed_ai_image(fmt):
    raw = jpeg() if fmt == "jpeg" else png()
    mime = f"image/{fmt}"
    signed = c2pa_sign(raw, mime, "Image Maker/2.1")
    reader = c2pa_reader()
    assert reader is not None
    found = metadata_evidence(signed, reader, mime)
    assert kinds(found) == [("c2pa", "Image Maker", True)] and found[0].valid is True
    assert "trainedAlgorithmicMedia" in found[0].detail and "Valid" in found[0].detail
    assert metadata_evidence(signed, None, mime)[0].detail.startswith("C2PA manifest present, not verified")


def test_c2pa_tampered_pixels_are_reported_not_conclusive():
    raw = jpeg()
    signed = bytearray(c2pa_sign(raw, "image/jpeg", "Image Maker/2.1"))
    sos = signed.rindex(b"\xff\xda")
    signed[sos + 400] ^= 0x01  # one bit of entropy-coded data
    (found,) = metadata_evidence(bytes(signed), c2pa_reader(), "image/jpeg")
    assert found.kind == "c2pa" and found.valid is False and not found.conclusive
    assert "dataHash.mismatch" in found.detail


def test_c2pa_camera_capture_is_not_ai():
    signed = c2pa_sign(jpeg(), "image/jpeg", "Camera/1.0", source_type=CAPTURE)
    (found,) = metadata_evidence(signed, c2pa_reader(), "image/jpeg")
    assert found.valid is True and not found.conclusive and found.generator is None


# --------------------------------------------------------------------------- labelled corpus

EXPECTED_FAMILY = {
    "chroma": "Chroma",
    "flux": "FLUX.1",
    "sd3": "Stable Diffusion 3",
    "sdxl": "SDXL",
    "sdxl-turbo": "SDXL Turbo",
    "stable-cascade": "Stable Cascade",
}


def test_labeled_corpus_metadata(labeled):
    rows = list(csv.DictReader(open(LABELED / "MANIFEST.csv")))
    identified: Counter[str] = Counter()
    for row in rows:
        found = [e for e in metadata_evidence((LABELED / row["path"]).read_bytes()) if e.conclusive]
        if row["label"] == "real":
            assert found == [], row["path"]  # no real photo is flagged by its metadata
            continue
        if found:
            (e,) = found
            assert e.generator is not None and e.generator.startswith(EXPECTED_FAMILY[row["generator_or_source"]]), (
                row["path"],
                e,
            )
            identified[f"{row['generator_or_source']}: {e.generator}"] += 1
    print(f"\nlabelled corpus: {sum(identified.values())} fakes identified by metadata: {dict(sorted(identified.items()))}")
    assert sum(identified.values()) == 14  # the ComfyUI examples; the other fakes carry no metadata


# --------------------------------------------------------------------------- records and exit codes


@pytest.fixture()
def provenance_folder(tmp_path):
    folder = tmp_path / "prov"
    folder.mkdir()
    (folder / "a_comfy.png").write_bytes(png({"prompt": COMFY_PROMPT}))
    (folder / "b_plain.png").write_bytes(png(seed=3))
    (folder / "c_firefly.jpg").write_bytes(jpeg(software="Adobe Firefly", seed=4))
    (folder / "d_cut.png").write_bytes(png({"parameters": A1111}, seed=5)[:-200])  # truncated: an error
    return folder


def test_records_carry_evidence_and_combined(home, provenance_folder):
    p = run_cli("scan", str(provenance_folder), "-q", "--threshold", "1e9", "--no-cache")  # the model says real
    assert p.returncode == 2  # the truncated file is an error: errors win
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    header, results, summary = lines[0], lines[1:-1], lines[-1]
    assert header["evidence"] == "metadata" and header["schema_version"] == 3
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in results}
    comfy, plain, firefly, cut = (by_name[n] for n in ("a_comfy.png", "b_plain.png", "c_firefly.jpg", "d_cut.png"))
    assert comfy["status"] == "real" and comfy["combined"] == "fake"
    assert comfy["evidence"][0]["kind"] == "comfyui" and comfy["evidence"][0]["generator"] == "FLUX.1 [dev]"
    assert plain["status"] == "real" and plain["combined"] == "real" and plain["evidence"] == []
    assert firefly["combined"] == "fake" and firefly["evidence"][0]["generator"] == "Adobe Firefly"
    assert cut["status"] == "error" and "combined" not in cut and cut["evidence"][0]["kind"] == "a1111"
    assert all(len(r["sha256"]) == 64 for r in results)
    assert summary["fake"] == 0 and summary["combined_fake"] == 2

    (provenance_folder / "d_cut.png").unlink()
    p = run_cli("scan", str(provenance_folder), "-q", "--threshold", "1e9", "--no-cache")
    assert p.returncode == 1  # no model fake, but evidence is conclusive: exit as for a fake
    p = run_cli("scan", str(provenance_folder), "-q", "--threshold", "1e9", "--no-cache", "--evidence", "none")
    assert p.returncode == 0
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert all("evidence" not in r and "combined" not in r for r in lines[1:-1]) and "combined_fake" not in lines[-1]


def test_csv_evidence_columns(home, provenance_folder):
    p = run_cli("scan", str(provenance_folder), "-q", "-f", "csv", "--threshold", "1e9", "--no-cache")
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(p.stdout.decode().splitlines())}
    assert rows["a_comfy.png"]["combined"] == "fake" and rows["a_comfy.png"]["evidence"] == "comfyui=FLUX.1 [dev]"
    assert rows["b_plain.png"]["combined"] == "real" and rows["b_plain.png"]["evidence"] == ""


SDXL_BITS = [int(b) for b in f"{0b101100111110110010010000011110111011000110011110:b}"]


def watermarked_png(kind: str, seed: int) -> bytes:
    """A photo-like image marked exactly as the SD 1 (CompVis txt2img) or SDXL (Stability) scripts do."""
    import io

    import numpy as np
    from conftest import textured_image
    from imwatermark import WatermarkEncoder
    from PIL import Image

    rgb = np.asarray(textured_image(np.random.default_rng(seed), 512, 384))
    encoder = WatermarkEncoder()
    if kind == "sd1":
        encoder.set_watermark("bytes", b"StableDiffusionV1")
    else:
        encoder.set_watermark("bits", SDXL_BITS)
    bgr = encoder.encode(np.ascontiguousarray(rgb[:, :, ::-1]), "dwtDct")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(buf, format="PNG")
    return buf.getvalue()


def test_sd_watermarks_found_with_evidence_all(home, tmp_path):
    pytest.importorskip("imwatermark", reason="the watermark extra is part of the test install")
    folder = tmp_path / "wm"
    folder.mkdir()
    (folder / "a_sd1.png").write_bytes(watermarked_png("sd1", 1))
    (folder / "b_sdxl.png").write_bytes(watermarked_png("sdxl", 2))
    (folder / "c_plain.png").write_bytes(png(seed=9))
    p = run_cli("scan", str(folder), "-q", "--evidence", "all", "--threshold", "1e9", "--no-cache")
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert lines[0]["evidence"] == "all" and p.returncode == 1, p.stderr.decode()
    sd1, sdxl, plain = lines[1:-1]
    assert [(e["kind"], e["generator"]) for e in sd1["evidence"]] == [("watermark", "Stable Diffusion 1.x")]
    assert [(e["kind"], e["generator"]) for e in sdxl["evidence"]] == [("watermark", "SDXL")]
    assert sd1["combined"] == sdxl["combined"] == "fake" and plain["evidence"] == [] and plain["combined"] == "real"
    p = run_cli("scan", str(folder), "-q", "--threshold", "1e9", "--no-cache")  # metadata only: no watermark
    assert p.returncode == 0 and all(r["evidence"] == [] for r in map(json.loads, p.stdout.decode().splitlines()[1:-1]))


def test_evidence_all_without_the_watermark_extra(home, tmp_path):
    code = "import sys; sys.modules['imwatermark'] = None; from codescan.cli import main; main()"
    import subprocess
    import sys

    (tmp_path / "a.png").write_bytes(png())
    p = subprocess.run(
        [sys.executable, "-P", "-c", code, "scan", str(tmp_path / "a.png"), "--evidence", "all", "--no-cache"],
        capture_output=True,
        timeout=300,
    )
    assert p.returncode == 2 and b"pip install 'codescan[watermark]'" in p.stderr and p.stdout == b""
