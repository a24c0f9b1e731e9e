"""`codescan eval`: numpy metrics against scikit-learn, the CLI's JSON and tables, five-crop geometry, the ROC plot."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from codescan.train import metrics
from conftest import run_cli, textured_image
from PIL import Image

from codescan.decoding.decode import DecodeLimits, decode_file


def decode_five_file(path: str, limits):
    """The five crops `scan --crops 5` and `eval --crops 5` judge, decoded as the workers do."""
    from codescan.decoding.decode import decode_bytes
    from codescan.inputs.read import read_limited

    return decode_bytes(read_limited(path, limits.max_filesize), limits, path, crops=5)

# ---------------------------------------------------------------- metrics vs scikit-learn


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores with many ties (scores drawn from a few values), both classes present."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 200))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]
    values = rng.normal(size=int(rng.integers(2, 12)))
    return y, values[rng.integers(0, len(values), n)] + 0.3 * y


@pytest.mark.parametrize("seed", range(40))
def test_metrics_match_sklearn_with_ties(seed):
    from sklearn import metrics as sk

    y, s = _random_case(seed)
    assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = sk.roc_curve(y, s, drop_intermediate=False)
    curve = metrics.roc_curve(y, s)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds, thr)

    t = float(np.median(s))  # a threshold equal to some scores: strictly above is fake
    m = metrics.binary_metrics(y, s, t)
    pred = s > t
    tn, fp, fn, tp = sk.confusion_matrix(y, pred, labels=[False, True]).ravel()
    assert (m.confusion.tn, m.confusion.fp, m.confusion.fn, m.confusion.tp) == (tn, fp, fn, tp)
    assert m.balanced_accuracy == pytest.approx(sk.balanced_accuracy_score(y, pred), abs=1e-12)
    assert m.real_accuracy == pytest.approx(sk.recall_score(y, pred, pos_label=False))
    assert m.fake_accuracy == pytest.approx(sk.recall_score(y, pred, pos_label=True))
    assert (m.n_real, m.n_fake) == (int((~y).sum()), int(y.sum()))


def test_metrics_known_values_and_missing_classes():
    y = np.array([0, 0, 1, 1], dtype=bool)
    assert metrics.roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert metrics.roc_auc(y, np.array([1.0, 1.0, 1.0, 1.0])) == 0.5  # all tied: chance
    assert metrics.average_precision(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx((1 + 2 / 3) / 2)
    only_fake = metrics.binary_metrics(np.ones(3, bool), np.array([1.0, -1.0, 2.0]), 0.0)
    assert only_fake.auc is None and only_fake.real_accuracy is None and only_fake.balanced_accuracy is None
    assert only_fake.fake_accuracy == pytest.approx(2 / 3) and only_fake.ap == 1.0
    only_real = metrics.binary_metrics(np.zeros(2, bool), np.array([1.0, -1.0]), 0.0)
    assert only_real.ap is None and only_real.auc is None and only_real.real_accuracy == 0.5
    with pytest.raises(ValueError):
        metrics.roc_auc(y, np.array([0.0, np.nan, 1.0, 2.0]))


# ---------------------------------------------------------------- five crops


def _coordinate_image(width: int, height: int) -> Image.Image:
    """R = x mod 256, G = y mod 256, B = x // 256 + 16 · (y // 256): every pixel says where it is."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([x % 256, y % 256, x // 256 + 16 * (y // 256)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_five_crops_are_centre_and_corners(tmp_path):

    w, h = 601, 400
    im = _coordinate_image(w, h)
    im.save(tmp_path / "c.png")
    full = np.asarray(im)
    five = decode_five_file(str(tmp_path / "c.png"), DecodeLimits())
    assert five.crops.shape == (5, 224, 224, 3) and five.crops.dtype == np.uint8
    assert (five.width, five.height, five.format) == (w, h, "PNG")
    centre = decode_file(str(tmp_path / "c.png"), DecodeLimits())
    assert five.boxes == (
        centre.box,
        (0, 0, 224, 224),
        (w - 224, 0, w, 224),
        (0, h - 224, 224, h),
        (w - 224, h - 224, w, h),
    )
    for crop, (left, top, right, bottom) in zip(five.crops, five.boxes):
        np.testing.assert_array_equal(crop, full[top:bottom, left:right])


@pytest.mark.parametrize(
    "size,mode,ext",
    [((601, 400), "RGB", "png"), ((225, 227), "RGB", "jpg"), ((100, 50), "RGB", "png"), ((300, 90), "L", "jpg"),
     ((90, 500), "P", "png"), ((224, 224), "RGBA", "webp"), ((513, 260), "CMYK", "tiff")],
)
def test_crop_zero_equals_the_scanner_crop_bit_for_bit(tmp_path, size, mode, ext):

    rng = np.random.default_rng(sum(size))
    path = tmp_path / f"img.{ext}"
    textured_image(rng, *size).convert(mode).save(path)
    five = decode_five_file(str(path), DecodeLimits())
    scanned = decode_file(str(path), DecodeLimits())
    np.testing.assert_array_equal(five.crops[0], scanned.crop)
    assert five.boxes[0] == scanned.box and (five.width, five.height, five.format) == (
        scanned.width, scanned.height, scanned.format)


def test_short_axes_are_padded_like_the_centre_crop(tmp_path):
    """A 100×300 image: every crop takes the whole width, padded as the centre crop pads it."""

    im = _coordinate_image(100, 300)
    im.save(tmp_path / "s.png")
    five = decode_five_file(str(tmp_path / "s.png"), DecodeLimits())
    full = np.asarray(im)
    left_pad = (224 - 100) // 2
    assert [b[0] for b in five.boxes] == [0] * 5 and [b[2] for b in five.boxes] == [100] * 5
    assert [b[1] for b in five.boxes] == [38, 0, 0, 76, 76]  # centre: round(76 / 2) = 38
    for crop, (_, top, _, bottom) in zip(five.crops, five.boxes):
        assert not crop[:, :left_pad].any() and not crop[:, left_pad + 100 :].any()
        np.testing.assert_array_equal(crop[:, left_pad : left_pad + 100], full[top:bottom])
    np.testing.assert_array_equal(five.crops[1], five.crops[2])  # left and right corners coincide


def test_five_crop_decode_keeps_the_scanner_limits_and_error_codes(tmp_path):

    from codescan.inputs.read import DecodeFailure

    good = tmp_path / "g.png"
    textured_image(np.random.default_rng(0), 300, 300).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "t.jpg"
    text.write_text("hello")
    cases = [(cut, DecodeLimits(), "truncated"), (text, DecodeLimits(), "not_an_image"),
             (good, DecodeLimits(max_pixels=300 * 299), "too_large"), (good, DecodeLimits(max_filesize=100), "too_large")]
    for path, limits, code in cases:
        with pytest.raises(DecodeFailure) as info:
            decode_five_file(str(path), limits)
        assert info.value.code == code
        with pytest.raises(DecodeFailure) as scanned:
            decode_file(str(path), limits)
        assert scanned.value.code == code


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """real/ 8 images, fake/alpha 4, fake/beta/deeper 3, plus one truncated real and one text file named .jpg."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(11)
    sizes = [(300, 200), (120, 90), (224, 224), (500, 260), (260, 400), (64, 64), (230, 231), (333, 333)]
    (root / "real").mkdir()
    for i, size in enumerate(sizes):
        textured_image(rng, *size).save(root / "real" / f"r{i}.png")
    for gen, n in (("alpha", 4), ("beta/deeper", 3)):
        (root / "fake" / gen).mkdir(parents=True)
        for i in range(n):
            textured_image(rng, int(rng.integers(100, 500)), int(rng.integers(100, 500))).save(
                root / "fake" / gen / f"f{i}.jpg", quality=85)
    (root / "real" / "broken.png").write_bytes((root / "real" / "r0.png").read_bytes()[:200])
    (root / "fake" / "alpha" / "notes.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def scan_scores(labelled, session_home):
    """Per-file scores of every head from `codescan scan --head all`: what eval must be measuring."""
    p = run_cli("scan", str(labelled), "--head", "all", "--batch-size", "32", "-q", env={"CODESCAN_HOME": str(session_home)})
    records = [json.loads(line) for line in p.stdout.decode().splitlines()]
    return {r["path"]: r for r in records if r.get("type") == "result" and "heads" in r}


@pytest.fixture(scope="module")
def evaluated(labelled, session_home, tmp_path_factory):
    png = tmp_path_factory.mktemp("plot") / "roc.png"
    p = run_cli("eval", "--data", str(labelled), "--batch-size", "32", "--plot", str(png),
                env={"CODESCAN_HOME": str(session_home)})
    return p, png


def _expected(scan_scores: dict, head: str, keep) -> tuple[np.ndarray, np.ndarray]:
    rows = [(("/fake/" in path), r["heads"][head]["score"]) for path, r in scan_scores.items() if keep(path)]
    return np.array([f for f, _ in rows]), np.array([s for _, s in rows])


def test_eval_json_matches_scan_scores_and_sklearn(evaluated, scan_scores, labelled):
    from sklearn import metrics as sk

    p, _ = evaluated
    assert p.returncode == 0, p.stderr.decode()
    doc = json.loads(p.stdout)  # stdout holds exactly one JSON document
    assert doc["schema_version"] == 1 and doc["crops"] == 1 and doc["weights"]["name"] == "code"
    assert doc["counts"] == {"files": 17, "scored": 15, "real": 8, "fake": 7, "undecodable": 2}
    assert len(scan_scores) == 15
    assert set(doc["heads"]) == {"linear", "knn", "ocsvm"}
    for head, report in doc["heads"].items():
        assert report["threshold"] == 0.0
        assert set(report["generators"]) == {"alpha", "beta"}
        subsets = {"overall": lambda path: True, "alpha": lambda path: "/fake/beta/" not in path,
                   "beta": lambda path: "/fake/alpha/" not in path}
        for name, keep in subsets.items():
            got = report["overall"] if name == "overall" else report["generators"][name]
            y, s = _expected(scan_scores, head, keep)
            pred = s > 0.0
            assert got["n_real"] == 8 and got["n_fake"] == int(y.sum())
            assert got["auc"] == pytest.approx(sk.roc_auc_score(y, s), abs=1e-9)
            assert got["ap"] == pytest.approx(sk.average_precision_score(y, s), abs=1e-9)
            assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
            tn, fp, fn, tp = sk.confusion_matrix(y, pred, labels=[False, True]).ravel()
            assert got["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


def test_eval_lists_undecodable_files_without_scoring_them(evaluated, labelled):
    doc = json.loads(evaluated[0].stdout)
    assert [{k: v for k, v in u.items() if k != "error"} for u in doc["undecodable"]] == [
        {"path": str(labelled / "fake" / "alpha" / "notes.jpg"), "label": "fake", "generator": "alpha",
         "error_code": "not_an_image"},
        {"path": str(labelled / "real" / "broken.png"), "label": "real", "generator": "real", "error_code": "truncated"},
    ]
    assert all(u["error"] for u in doc["undecodable"])


def test_eval_tables_go_to_stderr(evaluated):
    err = evaluated[0].stderr.decode()
    for needle in ("linear:", "knn:", "ocsvm:", " alpha ", " beta ", "AUC", "TP", "2 undecodable files"):
        assert needle in err
    assert "Traceback" not in err


def test_plot_writes_a_png(evaluated):
    _, png = evaluated
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 300  # three panels side by side


def test_quiet_writes_nothing_to_stderr_and_head_selects(home, labelled):
    p = run_cli("eval", "--data", str(labelled), "--head", "knn", "-q")
    assert p.returncode == 0 and p.stderr == b""
    assert list(json.loads(p.stdout)["heads"]) == ["knn"]


def test_five_crops_score_at_least_the_centre(home, labelled):
    """Crop 0 is the centre crop, so max over crops never scores below it; images ≤ 224 px have five equal crops."""
    from codescan.train.evaluate import EvalConfig, build_report, score_samples

    one = score_samples(EvalConfig(data=labelled, engine="torch", precision="fp32"))
    five = score_samples(EvalConfig(data=labelled, crops=5, engine="torch", precision="fp32"))
    assert [s.path for s in one.samples] == [s.path for s in five.samples]
    small = np.array([max(Image.open(s.path).size) <= 224 for s in one.samples])
    assert small.any() and not small.all()
    for head in one.scores:
        assert np.all(five.scores[head] >= one.scores[head] - 1e-5)
        np.testing.assert_allclose(five.scores[head][small], one.scores[head][small], atol=1e-5)
        assert np.any(five.scores[head][~small] > one.scores[head][~small] + 1e-4)
    assert build_report(five).to_dict()["crops"] == 5


def test_manifest_input_and_errors(home, labelled, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,generator\n{labelled}/real/r0.png,real,\n{labelled}/fake/alpha/f0.jpg,fake,alpha\n")
    p = run_cli("eval", "--data", str(manifest), "-q")
    assert p.returncode == 0, p.stderr.decode()
    doc = json.loads(p.stdout)
    assert doc["counts"]["scored"] == 2 and set(doc["heads"]["linear"]["generators"]) == {"alpha"}

    for args, needle in [
        (["--data", str(tmp_path / "nowhere")], "neither real/ nor fake/"),
        (["--data", str(labelled), "--crops", "3"], "--crops"),
        (["--data", str(labelled), "--plot", str(tmp_path / "no" / "roc.png")], "does not exist"),
    ]:
        p = run_cli("eval", *args)
        assert p.returncode == 2 and p.stdout == b"" and needle in p.stderr.decode(), p.stderr.decode()
        assert "Traceback" not in p.stderr.decode()


def test_plot_without_matplotlib_is_one_line_error(home, labelled, tmp_path):
    """Checked before any image is embedded; stdout stays empty."""
    import subprocess

    code = "import sys; sys.modules['matplotlib'] = None; from codescan.cli import main; main()"
    argv = ["eval", "--data", str(labelled), "--plot", str(tmp_path / "roc.png")]
    p = subprocess.run([sys.executable, "-P", "-c", code, *argv], capture_output=True, timeout=120)
    assert p.returncode == 2 and p.stdout == b""
    assert p.stderr.decode().strip() == "codescan: error: --plot needs matplotlib: pip install 'codescan[plot]'"


def test_embed_files_goes_through_the_scans_decode_pool(tmp_path):
    """eval, calibrate and head fitting decode as the scan does: in the killable workers, with the
    scan's examination (a text file named .jpg is an error, a file with no image at all too)."""
    import numpy as np
    from codescan.train.embed import embed_files
    from PIL import Image

    class Mean:  # an engine: (N, 224, 224, 3) uint8 -> (N, 3) float32
        device = "cpu"
        def embed(self, crops: np.ndarray) -> np.ndarray:
            return crops.reshape(len(crops), -1, 3).mean(1).astype(np.float32)

    Image.fromarray(np.full((300, 260, 3), 90, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 40)
    (tmp_path / "notes.txt").write_text("not an image\n")
    paths = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "notes.txt"]
    one = embed_files(paths, Mean(), batch_size=2, workers=1)
    five = embed_files(paths, Mean(), batch_size=2, workers=1, crops=5)
    assert one.index.tolist() == five.index.tolist() == [0]
    assert one.emb.shape == (1, 3) and five.emb.shape == (1, 5, 3)
    np.testing.assert_allclose(five.emb[:, 0], one.emb)  # box 0 is the centre crop
    assert {i: f.code for i, f in one.failures.items()} == {1: "corrupt", 2: "not_an_image"}
