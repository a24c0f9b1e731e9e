"""Parity with the authors' inference path (tests/official.py: transformers + torchvision + sklearn).

One official-layout checkpoint (random ViT-Tiny, ``layer_norm_eps=1e-6``, scikit-learn heads
dumped with joblib) is imported with the real CLI, and a folder of deliberately awkward images
(odd sizes on both sides of 224, every colour mode and container we accept) is scanned with
the real CLI. Against the reference we then check, per image:

- the crop pixels are bit-identical (also on every file of the shared labeled corpus);
- the embeddings agree (cosine >= 0.9999);
- every head's verdict equals scikit-learn's ``predict`` and its score is close to the
  estimator's own decision function;
- the record's width/height/format/crop describe the file as Pillow and torchvision see it.

A second, smaller checkpoint with transformers' default ``layer_norm_eps=1e-12`` is built so
that the epsilon visibly changes the embedding, proving the configured value is the one used.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from conftest import LABELED, require_corpus  # noqa: E402
from official import Reference, build_official_checkpoint  # noqa: E402

CODESCAN = str(Path(sys.executable).parent / "codescan")
pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency expressed in bytes:UserWarning")
CROP = 224
HEADS = ("linear", "knn", "ocsvm")

# ---------------------------------------------------------------------------------------------
# Test images: deterministic, textured, awkward.
# ---------------------------------------------------------------------------------------------


def texture(seed: int, width: int, height: int) -> np.ndarray:
    """(h, w, 3) uint8: smooth noise upsampled + a random-direction gradient + fine grain."""
    rng = np.random.default_rng(seed)
    lo = rng.integers(0, 256, (max(2, height // 12 + 2), max(2, width // 12 + 2), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(lo).resize((width, height), Image.BICUBIC), dtype=np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)
    a, b = rng.uniform(-1, 1, (2, 3))
    grad = (u[..., None] * a + v[..., None] * b) * 127.5 + 127.5
    grain = rng.normal(0, 10, (height, width, 3))
    return np.clip(0.55 * smooth + 0.45 * grad + grain, 0, 255).astype(np.uint8)


def _alpha(seed: int, width: int, height: int) -> Image.Image:
    """An alpha plane with fully transparent, partly transparent and opaque regions."""
    a = texture(seed + 1000, width, height)[..., 0].astype(np.int32)
    a = np.where(a < 70, 0, np.where(a > 190, 255, a))
    return Image.fromarray(a.astype(np.uint8), "L")


def make_image(seed: int, size: tuple[int, int], kind: str) -> tuple[Image.Image, dict]:
    """The image in its target mode, and the extra keyword arguments for save()."""
    w, h = size
    rgb = Image.fromarray(texture(seed, w, h), "RGB")
    if kind == "RGB":
        return rgb, {}
    if kind in ("L", "CMYK", "1"):
        return rgb.convert(kind), {}
    if kind == "RGBA":
        im = rgb.copy()
        im.putalpha(_alpha(seed, w, h))
        return im, {}
    if kind == "LA":
        im = rgb.convert("L").convert("LA")
        im.putalpha(_alpha(seed, w, h))
        return im, {}
    if kind == "P_trns":  # one transparent palette index
        im = rgb.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        return im, {"transparency": 5}
    if kind == "P_trns_bytes":  # tRNS with an alpha per palette entry
        im = rgb.quantize(colors=200, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
        return im, {"transparency": bytes((i * 37) % 256 for i in range(200))}
    if kind == "P":
        return rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT), {}
    if kind == "I;16":  # 0..~330: Pillow saturates > 255 when converting to RGB; keep both regions
        g = np.asarray(rgb.convert("L"), dtype=np.uint16) * 13 // 10
        return Image.frombytes("I;16", (w, h), g.astype("<u2").tobytes()), {}
    if kind == "I":  # 32-bit signed, including negatives (clipped to 0 by convert)
        g = np.asarray(rgb.convert("L"), dtype=np.int32) * 3 // 2 - 40
        return Image.fromarray(g.astype(np.int32), "I"), {}
    raise ValueError(kind)


# name, (width, height), mode kind, Pillow format, save() options
SPECS: list[tuple[str, tuple[int, int], str, str, dict]] = [
    ("jpg_rgb_17x300.jpg", (17, 300), "RGB", "JPEG", {"quality": 92}),
    ("jpg_rgb_224x224.jpg", (224, 224), "RGB", "JPEG", {"quality": 90}),
    ("jpg_rgb_225x225.jpg", (225, 225), "RGB", "JPEG", {"quality": 95, "subsampling": 0}),
    ("jpg_rgb_600x401.jpg", (600, 401), "RGB", "JPEG", {"quality": 85, "progressive": True}),
    ("jpg_rgb_301x223.jpg", (301, 223), "RGB", "JPEG", {"quality": 75, "subsampling": 1}),
    ("jpg_l_1000x50.jpg", (1000, 50), "L", "JPEG", {"quality": 90}),
    ("jpg_l_225x227.jpg", (225, 227), "L", "JPEG", {}),
    ("jpg_cmyk_227x225.jpg", (227, 225), "CMYK", "JPEG", {"quality": 90}),
    ("jpg_cmyk_350x260.jpg", (350, 260), "CMYK", "JPEG", {"quality": 80}),
    ("jpg_rgb_3x2.jpg", (3, 2), "RGB", "JPEG", {}),
    ("jpg_rgb_exif6_300x240.jpg", (300, 240), "RGB", "JPEG", {"orientation": 6}),  # ignored, like the reference
    ("png_rgb_225x227.png", (225, 227), "RGB", "PNG", {}),
    ("png_rgb_227x225.png", (227, 225), "RGB", "PNG", {}),
    ("png_rgb_223x221.png", (223, 221), "RGB", "PNG", {}),
    ("png_rgb_229x231.png", (229, 231), "RGB", "PNG", {}),
    ("png_rgb_231x229.png", (231, 229), "RGB", "PNG", {}),
    ("png_rgb_224x1000.png", (224, 1000), "RGB", "PNG", {}),
    ("png_rgb_1000x224.png", (1000, 224), "RGB", "PNG", {}),
    ("png_rgba_300x260.png", (300, 260), "RGBA", "PNG", {}),
    ("png_rgba_100x100.png", (100, 100), "RGBA", "PNG", {}),
    ("png_la_250x180.png", (250, 180), "LA", "PNG", {}),
    ("png_p_trns_240x240.png", (240, 240), "P_trns", "PNG", {}),
    ("png_p_trnsbytes_230x500.png", (230, 500), "P_trns_bytes", "PNG", {}),
    ("png_i16_320x240.png", (320, 240), "I;16", "PNG", {}),
    ("png_i16_200x230.png", (200, 230), "I;16", "PNG", {}),
    ("png_1_260x260.png", (260, 260), "1", "PNG", {}),
    ("png_l_226x226.png", (226, 226), "L", "PNG", {}),
    ("webp_rgb_300x310.webp", (300, 310), "RGB", "WEBP", {"quality": 80}),
    ("webp_rgba_256x200.webp", (256, 200), "RGBA", "WEBP", {"lossless": True}),
    ("gif_p_280x210.gif", (280, 210), "P_trns", "GIF", {}),
    ("gif_anim_230x240.gif", (230, 240), "P", "GIF", {"anim": True}),
    ("tif_rgb_229x231.tif", (229, 231), "RGB", "TIFF", {}),
    ("tif_rgb_lzw_222x400.tif", (222, 400), "RGB", "TIFF", {"compression": "tiff_lzw"}),
    ("tif_i16_250x300.tif", (250, 300), "I;16", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("tif_cmyk_240x260.tif", (240, 260), "CMYK", "TIFF", {}),
    ("tif_i32_300x228.tif", (300, 228), "I", "TIFF", {}),
    ("bmp_rgb_401x233.bmp", (401, 233), "RGB", "BMP", {}),
    ("bmp_p_228x300.bmp", (228, 300), "P", "BMP", {}),
    ("bmp_1_300x17.bmp", (300, 17), "1", "BMP", {}),
]


def write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, (name, size, kind, fmt, opts) in enumerate(SPECS):
        im, extra = make_image(seed, size, kind)
        opts = {**opts, **extra}
        path = folder / name
        if "orientation" in opts:
            exif = Image.Exif()
            exif[0x0112] = opts.pop("orientation")
            opts["exif"] = exif.tobytes()
        if opts.pop("anim", False):  # two frames; only the first is judged
            second = Image.fromarray(texture(seed + 500, *size), "RGB").quantize(colors=256)
            im.save(path, fmt, save_all=True, append_images=[second], duration=100, loop=0, **opts)
        else:
            im.save(path, fmt, **opts)
        paths.append(path)
    return sorted(paths)  # the walk's order (names are ASCII)


def reference_crop(path: Path) -> np.ndarray:
    """The reference's crop: open, convert("RGB"), torchvision CenterCrop(224) (pads small sides)."""
    from torchvision.transforms import CenterCrop

    with Image.open(path) as im:
        return np.asarray(CenterCrop(CROP)(im.convert("RGB")))


def torchvision_box(w: int, h: int) -> list[int]:
    left = int(round((w - CROP) / 2)) if w >= CROP else 0
    top = int(round((h - CROP) / 2)) if h >= CROP else 0
    return [left, top, left + min(w, CROP), top + min(h, CROP)]


def label_of(path: Path) -> int:
    return zlib.crc32(path.name.encode()) & 1


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


def _run(*args: str, home: Path) -> subprocess.CompletedProcess:
    # Only our store: a CODESCAN_WEIGHTS/ENGINE/... left in the caller's environment must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODESCAN_")}
    env["CODESCAN_HOME"] = str(home)
    return subprocess.run([CODESCAN, *args], env=env, capture_output=True, timeout=300)


def _build(tmp_path_factory, tag: str, fit_paths: list[Path], labels: np.ndarray, eps: float, seed: int, tweak=None) -> dict:
    """An official-layout folder (optionally edited by ``tweak``), imported by the CLI into a fresh home."""
    folder = tmp_path_factory.mktemp(f"official-{tag}")
    with contextlib.ExitStack() as stack:
        ims = [stack.enter_context(Image.open(p)) for p in fit_paths]
        estimators = build_official_checkpoint(folder, ims, labels, seed=seed, layer_norm_eps=eps)
    if tweak is not None:
        tweak(folder)
    home = tmp_path_factory.mktemp(f"home-{tag}")
    p = _run("weights", "import", str(folder), home=home)
    assert p.returncode == 0, p.stderr.decode()
    return {"folder": folder, "home": home, "estimators": estimators}


@contextlib.contextmanager
def _home(home: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CODESCAN_HOME", str(home))
        yield


def codescan_embed(home: Path, paths: list[Path], engine_name: str = "torch"):
    """codescan's Python path: bundle → engine (fp32) → decode → embed."""
    from codescan.engines.protocol import EngineError
    from codescan.engines.registry import create_engine

    from codescan.decoding.decode import DecodeLimits, decode_file
    from codescan.weights.bundle import load_bundle

    with _home(home):
        bundle = load_bundle("code")
        try:
            engine = create_engine(bundle, engine_name, "fp32")
        except EngineError as exc:  # e.g. onnxruntime not installed
            pytest.skip(f"engine {engine_name}: {exc}")
    crops = np.stack([decode_file(str(p), DecodeLimits()).crop for p in paths])
    return engine, engine.embed(crops)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    paths = write_images(tmp_path_factory.mktemp("parity-images"))
    assert len(paths) >= 30
    seen = set()
    for p in paths:
        with Image.open(p) as im:
            seen.add((im.format, im.mode))
    wanted = {
        ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "P"),
        ("PNG", "I;16"), ("PNG", "1"), ("WEBP", "RGB"), ("WEBP", "RGBA"), ("GIF", "P"), ("TIFF", "I;16"),
        ("TIFF", "CMYK"), ("TIFF", "I"), ("BMP", "RGB"), ("BMP", "P"), ("BMP", "1"),
    }  # fmt: skip
    assert wanted <= seen, f"Pillow wrote other modes than intended: missing {wanted - seen}"
    return paths


@pytest.fixture(scope="module")
def official(tmp_path_factory, images) -> dict:
    """Checkpoint with layer_norm_eps=1e-6, heads fit on two thirds of the test images.

    The held-out third makes the knn scores non-trivial (a training image's nearest neighbour
    is itself); labels come from a hash of the name so they are not tied to size or format.
    """
    fit = [p for i, p in enumerate(images) if i % 3 != 2]
    labels = np.array([label_of(p) for p in fit])
    assert 0 < labels.sum() < len(labels)
    out = _build(tmp_path_factory, "eps6", fit, labels, eps=1e-6, seed=3)
    out["ref"] = Reference(out["folder"])
    out["ref_emb"] = out["ref"].embed_paths(images)
    return out


@pytest.fixture(scope="module", params=["auto", "torch"])
def scan(request, official, images) -> dict:
    """The real CLI on the image folder: all heads, exact precision, JSONL on stdout.

    Run as documented (engine chosen by codescan) and with ``--engine torch`` pinned, so
    both the default fp32 engine and the torch path are held to the reference.
    """
    folder = images[0].parent
    args = ["scan", str(folder), "--format", "jsonl", "--precision", "fp32", "--head", "all", "-o", "-"]
    if request.param != "auto":
        args += ["--engine", request.param]
    p = _run(*args, home=official["home"])
    lines = p.stdout.decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # stdout holds JSON lines and nothing else
    return {"proc": p, "records": records, "engine": request.param}


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_crops_are_bit_identical(images):
    """Crop-then-convert (codescan) == convert-then-CenterCrop (reference), on every mode here."""
    from codescan.decoding.decode import DecodeLimits, decode_file

    for path in images:
        got = decode_file(str(path), DecodeLimits())
        want = reference_crop(path)
        assert got.crop.dtype == np.uint8 and got.crop.shape == (CROP, CROP, 3), path.name
        assert np.array_equal(got.crop, want), f"{path.name}: crop differs from the reference"


def test_crops_match_on_labeled_corpus():
    """Same check on every file of the shared labeled corpus (decode only, no model)."""
    require_corpus(LABELED)
    from codescan.decoding.decode import DecodeLimits, decode_file
    from codescan.inputs.read import has_image_extension

    files = sorted(p for p in LABELED.rglob("*") if p.is_file() and has_image_extension(p.name))
    assert len(files) >= 500, f"expected the 561-file corpus, found {len(files)}"

    def check(path: Path) -> str | None:
        got = decode_file(str(path), DecodeLimits())
        want = reference_crop(path)
        with Image.open(path) as im:
            meta = (im.width, im.height, im.format)
        if (got.width, got.height, got.format) != meta:
            return f"{path}: {(got.width, got.height, got.format)} != Pillow's {meta}"
        if list(got.box) != torchvision_box(got.width, got.height):
            return f"{path}: crop box {got.box}"
        if not np.array_equal(got.crop, want):
            return f"{path}: crop pixels differ"
        return None

    with ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 1))) as pool:  # Pillow decodes without the GIL
        problems = [m for m in pool.map(check, files) if m]
    assert not problems, "\n".join(problems[:10])


def test_cli_output_is_jsonl_only(scan, images):
    p, records = scan["proc"], scan["records"]
    assert p.returncode in (0, 1, 2), p.stderr.decode()
    assert [r["type"] for r in records] == ["header"] + ["result"] * len(images) + ["summary"]
    header = records[0]
    assert (header["precision"], header["head"]) == ("fp32", "all")
    if scan["engine"] != "auto":
        assert header["engine"] == scan["engine"]
    assert header["thresholds"] == {h: 0.0 for h in HEADS}
    assert b"Traceback" not in p.stderr
    results = records[1:-1]
    assert [r["path"] for r in results] == [str(p_) for p_ in images]
    assert all(r["status"] in ("real", "fake") for r in results), [r for r in results if r["status"] not in ("real", "fake")]


def test_cli_records_describe_the_file(scan, images):
    for path, rec in zip(images, scan["records"][1:-1]):
        with Image.open(path) as im:
            assert (rec["width"], rec["height"], rec["format"]) == (im.width, im.height, im.format), path.name
        assert rec["crop"] == torchvision_box(rec["width"], rec["height"]), path.name


def test_exit_code_and_summary(scan, images):
    p, records = scan["proc"], scan["records"]
    s = records[-1]
    results = records[1:-1]
    fake = sum(r["status"] == "fake" for r in results)
    assert (s["files"], s["errors"], s["skipped"], s["fake"], s["real"]) == (
        len(images), 0, 0, fake, len(images) - fake
    )
    assert fake > 0, "no fake verdict: the exit-code check below proves nothing"
    assert p.returncode == 1, p.stderr.decode()


@pytest.mark.parametrize("engine_name", ["torch", "onnxruntime"])
def test_embeddings_match_reference(official, images, engine_name):
    engine, emb = codescan_embed(official["home"], images, engine_name)
    assert emb.shape == (len(images), 192) and emb.dtype == np.float32
    if engine_name == "torch":
        import torch.nn as nn

        # The epsilon barely moves these embeddings (see test_layer_norm_eps_1e12): check it directly.
        assert {m.eps for m in engine.model.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    cos = cosine_rows(emb, official["ref_emb"])
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.9999, f"{images[worst].name}: cosine {cos[worst]:.6f}"


def _reference_knn_score(est, x: np.ndarray) -> np.ndarray:
    """max cosine similarity to the fake bank minus max to the real bank, via sklearn's own neighbours."""
    dist, idx = est.kneighbors(x, n_neighbors=est.n_samples_fit_)
    y = est.classes_[est._y][idx]
    nearest = lambda cls: np.where(y == cls, dist, np.inf).min(axis=1)  # noqa: E731
    return nearest(0) - nearest(1)  # (1 - cos_real) - (1 - cos_fake)


def test_verdicts_and_scores_match_sklearn(official, scan, images):
    est, x = official["estimators"], official["ref_emb"]
    results = scan["records"][1:-1]
    want_status = {
        "linear": np.where(est["linear"].predict(x) == 1, "fake", "real"),
        "knn": np.where(est["knn"].predict(x) == 1, "fake", "real"),
        "ocsvm": np.where(est["ocsvm"].predict(x) == -1, "fake", "real"),
    }
    want_score = {
        "linear": est["linear"].decision_function(x),
        "knn": _reference_knn_score(est["knn"], x),
        "ocsvm": -est["ocsvm"].decision_function(x),
    }
    for head in HEADS:
        got_status = np.array([r["heads"][head]["status"] for r in results])
        got_score = np.array([r["heads"][head]["score"] for r in results])
        # Both verdicts must occur, or verdict parity says little.
        assert {"real", "fake"} <= set(want_status[head]), f"{head}: reference verdicts {set(want_status[head])}"
        # Exact, with no band around the threshold. The OCSVM was fit on some of these very
        # images, so its margin support vectors sit at |score| ~1e-5 by construction. Their
        # verdicts still agree: torch's fp32 embeddings equal the reference's bit for bit here,
        # onnxruntime's to ~5e-6 (abs), and the heads run in float64, so the nearest-threshold
        # OCSVM score is still ~90x farther from 0 than its deviation. The message shows the
        # reference score, so a flip caused by rounding alone would be obvious.
        bad = [(images[i].name, float(want_score[head][i])) for i in np.flatnonzero(got_status != want_status[head])]
        assert not bad, f"{head}: verdicts differ from sklearn predict on (file, reference score) {bad}"
        # The sign of the score is the verdict: consistent with the status codescan printed.
        assert np.array_equal(got_status == "fake", got_score > 0), head
        # Tolerances. Two fp32 implementations of the encoder (timm or codescan's ONNX graph vs
        # transformers) differ only in rounding; the heads then run in float64 (sklearn partly in
        # float32). Measured worst |difference| on these images: ~8e-7 with torch, ~6e-6 with
        # onnxruntime (linear head, scores of order 1). rtol=1e-3 / atol=1e-4 leaves >10x
        # headroom for other CPUs/kernels, while a real defect (wrong crop, token, sign, intercept,
        # or even one normalisation std off by 0.4%) moves scores by more and fails here.
        np.testing.assert_allclose(got_score, want_score[head], rtol=1e-3, atol=1e-4, err_msg=head)
    # The primary head of `--head all` is the first one, linear.
    assert all(r["head"] == "linear" and r["score"] == r["heads"]["linear"]["score"] for r in results)


def test_layer_norm_eps_1e12(tmp_path_factory, images):
    """transformers' default epsilon: imported as such, and honoured by the encoder.

    With ordinary activations the two epsilons give embeddings equal to ~1e-7, so this
    checkpoint's embedding parameters are scaled down until the first LayerNorm's input
    variance (~1e-8) is comparable to 1e-6: using the wrong epsilon would then change the
    embedding grossly (the test asserts it would), and the right one still matches the reference.
    """
    import transformers
    from safetensors.numpy import load_file, save_file

    def shrink_embeddings(folder: Path) -> None:
        """Patch projection, CLS token and position embeddings × 1e-3 (the heads stay as fit)."""
        state = load_file(str(folder / "model.safetensors"))
        for k in state:
            if k.startswith("embeddings."):
                state[k] = (state[k] * np.float32(1e-3)).astype(state[k].dtype)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    sub = images[::4]
    labels = np.arange(len(sub)) % 2
    out = _build(tmp_path_factory, "eps12", sub, labels, eps=1e-12, seed=5, tweak=shrink_embeddings)
    folder, home = out["folder"], out["home"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-12

    with _home(home):
        from codescan.weights.bundle import load_bundle

        meta = load_bundle("code").meta
    assert meta["encoder"]["layer_norm_eps"] == 1e-12
    engine, emb = codescan_embed(home, sub)
    import torch.nn as nn

    eps = {m.eps for m in engine.model.modules() if isinstance(m, nn.LayerNorm)}
    assert eps == {1e-12}

    reference = Reference(folder)
    ref = reference.embed_paths(sub)
    cos = cosine_rows(emb, ref)
    assert cos.min() >= 0.9999, cos
    try:
        _, emb_ort = codescan_embed(home, sub, "onnxruntime")
    except pytest.skip.Exception:
        pass
    else:
        assert cosine_rows(emb_ort, ref).min() >= 0.9999, "onnxruntime ignores layer_norm_eps"

    # The check has teeth: the same weights with epsilon 1e-6 give a clearly different embedding.
    right = reference.model
    reference.model = transformers.ViTModel.from_pretrained(
        str(folder), add_pooling_layer=False, layer_norm_eps=1e-6
    ).eval()
    wrong_cos = cosine_rows(emb, reference.embed_paths(sub))
    assert wrong_cos.max() < 0.999, f"epsilon has no visible effect: {wrong_cos}"
    reference.model = right

    # And the CLI scans with it, agreeing with sklearn's predict on the reference embeddings.
    p = _run("scan", *map(str, sub), "--precision", "fp32", "--head", "all", "-q", home=home)
    recs = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert [r["type"] for r in recs] == ["header"] + ["result"] * len(sub) + ["summary"]
    assert recs[-1]["errors"] == 0 and p.returncode == (1 if recs[-1]["fake"] else 0)
    est = out["estimators"]
    want = {
        "linear": est["linear"].predict(ref) == 1,
        "knn": est["knn"].predict(ref) == 1,
        "ocsvm": est["ocsvm"].predict(ref) == -1,
    }
    for head in HEADS:
        got = np.array([r["heads"][head]["status"] == "fake" for r in recs[1:-1]])
        assert np.array_equal(got, want[head]), head
