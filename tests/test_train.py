"""`codescan train`: the loss terms, the views, resume, --init, thresholds, and a bundle scan can use.

Training runs use a two-block ViT with 32-pixel patches (same code path as ViT-Tiny, a fraction
of the compute); the --init test trains the real ViT-Tiny shape for one step.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from codescan.train.augment import OPS, AugmentConfig, centre_crop
from codescan.train.config import TrainConfig
from codescan.train.data import load_samples
from codescan.train.fit_heads import fit_heads
from codescan.train.loop import (
    EpochEvent,
    Normalize,
    Trainer,
    split_embeddings,
    step_loss,
    step_views,
)
from codescan.train.loss import ViewEmbeddings, code_loss
from codescan.train.optim import build_optimizer, grad_scaler
from codescan.train.pool import decode_region, load_pool
from codescan.train.run import train_bundle
from codescan.train.threshold import choose_threshold
from conftest import run_cli, textured_image
from PIL import Image

from codescan.decoding.decode import DecodeLimits, decode_file
from codescan.model.encoder import EncoderConfig, build_encoder, load_encoder
from codescan.weights.bundle import load_bundle
from codescan.weights.install import import_official

TINY = EncoderConfig(patch_size=32, embed_dim=48, depth=2, num_heads=2, mlp_dim=96, layer_norm_eps=1e-6)


def _fake_pattern(image: Image.Image) -> Image.Image:
    """A 4-pixel checkerboard over smooth noise: the 'generator trace' the tiny model can learn."""
    x = np.asarray(image).astype(np.int16)
    yy, xx = np.mgrid[0 : x.shape[0], 0 : x.shape[1]]
    x += ((((yy // 2) + (xx // 2)) % 2) * 40 - 20)[..., None].astype(np.int16)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainset")
    rng = np.random.default_rng(3)
    for i in range(12):
        (root / "real").mkdir(exist_ok=True)
        textured_image(rng, int(rng.integers(40, 420)), int(rng.integers(40, 420))).save(root / "real" / f"r{i:02d}.png")
    for i in range(12):
        folder = root / "fake" / f"gen{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        image = textured_image(rng, int(rng.integers(40, 420)), int(rng.integers(40, 420)))
        _fake_pattern(image).save(folder / f"f{i:02d}.png")
    return root


@pytest.fixture()
def train_home(tmp_path, monkeypatch):
    """A store of its own: trained bundles never reach the session's shared store."""
    home = tmp_path / "home"
    monkeypatch.setenv("CODESCAN_HOME", str(home))
    return home


def tiny_config(dataset, out: str, **overrides) -> TrainConfig:
    settings = dict(data=str(dataset), out=out, epochs=2, batch_size=8, steps_per_epoch=2, encoder=TINY, val_fraction=0.25)
    return TrainConfig(**{**settings, **overrides})


# ---------------------------------------------------------------------------------------------
# The loss: both terms, each once


def test_each_loss_term_reaches_the_gradient_once():
    """clean/local fake views appear only in the fake term, clean/local real only in the real term:
    their gradients show whether each term is in the total, and how often."""
    gen = torch.Generator().manual_seed(0)
    groups = {f.name: torch.randn(4, 8, generator=gen, requires_grad=True) for f in ViewEmbeddings.__dataclass_fields__.values()}
    terms = code_loss(ViewEmbeddings(**groups))
    inputs = list(groups.values())
    g_total = torch.autograd.grad(terms.total, inputs, retain_graph=True)
    g_real = torch.autograd.grad(terms.real, inputs, retain_graph=True, allow_unused=True)
    g_fake = torch.autograd.grad(terms.fake, inputs, allow_unused=True)
    by_name = dict(zip(groups, zip(g_total, g_real, g_fake)))
    for name, (total, real, fake) in by_name.items():
        real = torch.zeros_like(total) if real is None else real
        fake = torch.zeros_like(total) if fake is None else fake
        torch.testing.assert_close(total, real + fake, msg=f"{name}: total gradient is not real + fake")
    for only_fake in ("clean_fake", "local_fake"):
        total, real, fake = by_name[only_fake]
        assert real is None and fake.abs().sum() > 0
        torch.testing.assert_close(total, fake)  # dropping the fake term would make this zero
    for only_real in ("clean_real", "local_real"):
        total, real, fake = by_name[only_real]
        assert fake is None and real.abs().sum() > 0
        torch.testing.assert_close(total, real)  # adding the real term twice would double this


def test_the_training_update_backpropagates_real_plus_fake(dataset, train_home):
    config = tiny_config(dataset, "grad", clip_grad=1e9)  # no clipping: the raw gradient is compared
    pool = load_pool(load_samples(dataset), config.context, threads=1)
    torch.manual_seed(0)
    model = build_encoder(TINY)
    model.init_weights("")
    reference = copy.deepcopy(model)
    views = step_views(pool, config, epoch=0, step=0)
    normalize = Normalize(torch.device("cpu"))

    terms = step_loss(reference, normalize, views, config, "off")
    params = list(reference.parameters())
    g_real = torch.autograd.grad(terms.real, params, retain_graph=True)
    g_fake = torch.autograd.grad(terms.fake, params)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    trainer = Trainer(config, pool, model, optimizer, grad_scaler(torch.device("cpu"), "off"), "off", 2, train_home, {})
    trainer.update(normalize, views, lr=1e-3)

    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    real, fake = torch.cat([g.flatten() for g in g_real]), torch.cat([g.flatten() for g in g_fake])
    assert fake.norm() > 0.05 * real.norm() and real.norm() > 0.05 * fake.norm()
    torch.testing.assert_close(got, real + fake, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Views and the in-RAM pool


@pytest.mark.parametrize("size", [(1001, 603), (385, 390), (223, 500), (32, 32), (384, 227)])
def test_clean_view_is_the_scanners_crop(tmp_path, size):
    path = tmp_path / "x.png"
    textured_image(np.random.default_rng(size[0]), *size).save(path)
    region = decode_region(path, 384, DecodeLimits())
    assert region.shape[0] <= 384 and region.shape[1] <= 384
    np.testing.assert_array_equal(centre_crop(region), decode_file(str(path), DecodeLimits()).crop)


def test_every_augmentation_keeps_a_224_rgb_view():
    image = textured_image(np.random.default_rng(0), 224, 224)
    for op in OPS:
        out = op(image, np.random.default_rng(1), AugmentConfig())
        assert (out.size, out.mode) == ((224, 224), "RGB"), op.__name__
        assert not np.array_equal(np.asarray(out), np.asarray(image)), op.__name__


def test_views_are_a_function_of_seed_epoch_and_step(dataset):
    config = tiny_config(dataset, "views")
    pool = load_pool(load_samples(dataset), config.context, threads=2)
    a = step_views(pool, config, epoch=1, step=1)
    assert a.shape == (2 * 4 * config.per_class, 224, 224, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, step_views(pool, config, epoch=1, step=1, threads=3))
    assert not np.array_equal(a, step_views(pool, config, epoch=1, step=0))
    assert not np.array_equal(a, step_views(pool, config, epoch=0, step=1))


def test_three_views_let_the_global_view_stand_in_for_the_augmented_one(dataset):
    config = tiny_config(dataset, "views3", views=3)
    pool = load_pool(load_samples(dataset), config.context, threads=2)
    views = step_views(pool, config, epoch=0, step=0)
    assert views.shape[0] == 2 * 3 * config.per_class
    emb = torch.arange(views.shape[0], dtype=torch.float32)[:, None].expand(-1, 2)  # row i holds i
    e = split_embeddings(emb, 3, config.per_class)
    b = config.per_class
    assert torch.equal(e.augmented_real, e.global_real) and torch.equal(e.augmented_fake, e.global_fake)
    assert [int(g[0, 0]) for g in (e.clean_real, e.global_real, e.local_real)] == [0, b, 2 * b]
    assert [int(g[0, 0]) for g in (e.clean_fake, e.global_fake, e.local_fake)] == [3 * b, 4 * b, 5 * b]


# ---------------------------------------------------------------------------------------------
# Thresholds


def test_threshold_maximises_balanced_accuracy_and_ties_go_towards_zero():
    scores = np.array([-2.0, -1.0, 0.5, 0.2, 1.0, 3.0])
    is_fake = np.array([False, False, False, True, True, True])
    choice = choose_threshold(scores, is_fake)
    # Both -0.4 (between -1 and 0.2) and 0.75 (between 0.5 and 1) reach 5/6; -0.4 is nearer 0.
    assert choice.rule == "max_balanced_accuracy" and choice.threshold == pytest.approx(-0.4)
    separable = choose_threshold(np.array([5.0, 6.0, 7.0, 9.0]), np.array([False, False, True, True]))
    assert separable.threshold == pytest.approx(6.5)  # strictly above = fake: 7 and 9 fake, 5 and 6 real
    imbalanced = choose_threshold(np.array([0.0, 1.0, 2.0, 3.0, 4.0, 10.0]), np.array([0, 0, 0, 0, 0, 1], bool))
    assert imbalanced.threshold == pytest.approx(7.0)  # accuracy would be as happy anywhere in 4..10


@pytest.mark.parametrize("is_fake", [[True, True], [False, False, False], []])
def test_threshold_falls_back_to_natural_without_both_classes(is_fake):
    choice = choose_threshold(np.arange(len(is_fake), dtype=float), np.array(is_fake, dtype=bool))
    assert (choice.threshold, choice.rule) == (0.0, "natural")


def test_fitted_heads_convert_like_the_official_pickles(tmp_path):
    """fit_heads reuses the pickle converter: a fitted estimator and its restricted-unpickled
    copy must become the same head."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import OneClassSVM

    from codescan.model.sklearn_heads import estimator_to_head
    from codescan.weights.unpickle import restricted_load

    rng = np.random.default_rng(0)
    emb, is_fake = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 2 == 1
    heads = fit_heads(emb, is_fake)
    assert set(heads) == {"linear", "knn", "ocsvm"}
    joblib.dump(LogisticRegression(max_iter=5000).fit(emb, is_fake.astype(int)), tmp_path / "linear.sav")
    _, unpickled = estimator_to_head(restricted_load(tmp_path / "linear.sav"))
    probe = rng.normal(size=(5, 6))
    np.testing.assert_array_equal(heads["linear"].score(probe), unpickled.score(probe))
    svm = OneClassSVM(kernel="poly", gamma="auto", nu=0.1).fit(emb[~is_fake])  # on real only, +1 = inlier = real
    np.testing.assert_allclose(heads["ocsvm"].score(probe), -svm.decision_function(probe), rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# End to end


def test_training_lowers_the_loss_and_scan_uses_the_bundle(dataset, train_home):
    config = tiny_config(dataset, "smoke", epochs=2, steps_per_epoch=4)
    result = train_bundle(config)

    pool = load_pool(load_samples(dataset), config.context, threads=2)
    views = step_views(pool, config, epoch=0, step=0)
    normalize = Normalize(torch.device("cpu"))
    torch.manual_seed(1)
    untrained = build_encoder(TINY)
    untrained.init_weights("")
    trained = load_encoder(result.bundle.encoder_state(), TINY)
    with torch.no_grad():
        before = step_loss(untrained.eval(), normalize, views, config, "off")
        after = step_loss(trained, normalize, views, config, "off")
    assert float(after.total) < 0.8 * float(before.total), (float(before.total), float(after.total))

    log = [json.loads(line) for line in (train_home / "train" / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9)) and [r["epoch"] for r in log] == [1] * 4 + [2] * 4
    assert set(log[0]) == {"epoch", "step", "loss", "loss_real", "loss_fake", "lr", "img_s"}
    assert all(r["loss"] == pytest.approx(r["loss_real"] + r["loss_fake"], rel=1e-5) for r in log)

    meta = result.bundle.meta
    assert meta["source"]["type"] == "trained" and meta["source"]["init"] == {"from": "scratch"}
    assert meta["training"]["config"]["epochs"] == 2 and meta["encoder"] == TINY.to_dict()
    assert meta["training"]["data"]["train"]["generators"].keys() <= {"gen0", "gen1"}
    assert set(meta["training"]["validation"]) == {"linear", "knn", "ocsvm"}
    thresholds = {n: v["threshold"] for n, v in meta["heads"].items()}
    assert thresholds == {n: v.threshold.threshold for n, v in result.validation.items()}

    p = run_cli("scan", str(dataset), "--weights", "smoke", "--head", "all", "-q")
    assert p.returncode in (0, 1), p.stderr
    records = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert records[0]["thresholds"] == thresholds
    results = records[1:-1]
    assert len(results) == 24 and {r["status"] for r in results} <= {"real", "fake"}
    for r in results:
        for name, verdict in r["heads"].items():
            assert (verdict["score"] > thresholds[name]) == (verdict["status"] == "fake")


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(dataset, train_home):
    straight = train_bundle(tiny_config(dataset, "straight"))

    class Stop(Exception):
        pass

    def stop_after_first_epoch(event):
        if isinstance(event, EpochEvent) and event.epoch == 1:
            raise Stop

    config = tiny_config(dataset, "resumed")
    with pytest.raises(Stop):
        train_bundle(config, on_event=stop_after_first_epoch)
    assert not (train_home / "weights" / "resumed").exists()
    with pytest.raises(ValueError, match="resumed run keeps its settings.*epochs 3 vs 2"):
        train_bundle(tiny_config(dataset, "resumed", epochs=3), resume=True)
    with pytest.raises(ValueError, match="--resume to continue"):
        train_bundle(config)
    resumed = train_bundle(config, resume=True)

    a, b = straight.bundle.encoder_state(), resumed.bundle.encoder_state()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed.bundle.meta["heads"] == straight.bundle.meta["heads"]
    logs = [(train_home / "train" / name / "metrics.jsonl").read_text().splitlines() for name in ("straight", "resumed")]
    strip = [[{k: v for k, v in json.loads(line).items() if k != "img_s"} for line in log] for log in logs]
    assert strip[0] == strip[1] and len(strip[0]) == 4


def test_cli_init_from_an_installed_bundle(dataset, train_home, small_checkpoint):
    base = import_official(small_checkpoint, name="base")
    lr = 1e-4
    p = run_cli(
        "train", "--data", str(dataset), "--init", "base", "--out", "tuned", "--epochs", "1",
        "--steps-per-epoch", "1", "--batch-size", "4", "--lr", str(lr), "-q",
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""  # --quiet
    summary = json.loads(p.stdout)
    tuned = load_bundle("tuned")
    assert summary["bundle"] == "tuned" and summary["digest"] == tuned.digest
    assert tuned.meta["source"]["init"] == {"from": "base", "digest": base.digest, "license": "MIT"}
    assert tuned.meta["encoder"] == base.meta["encoder"]
    before, after = base.encoder_state(), tuned.encoder_state()
    moved = max(float(np.abs(after[k] - before[k]).max()) for k in before)
    assert 0 < moved <= 1.5 * lr  # one AdamW step moves no weight further than ~lr: it started from base


def test_cli_refuses_a_missing_init_bundle_and_odd_batches(dataset, train_home):
    p = run_cli("train", "--data", str(dataset), "--init", "nothere", "--out", "x")
    assert p.returncode == 2 and b"no weights bundle 'nothere'" in p.stderr and b"Traceback" not in p.stderr
    p = run_cli("train", "--data", str(dataset), "--batch-size", "6", "--views", "5")
    assert p.returncode == 2 and b"'5' is not one of" in p.stderr


def test_scanning_never_imports_training_code():
    code = (
        "import sys, codescan.cli, codescan.pipeline, codescan.engines.torch_engine; "
        "bad = [m for m in sys.modules if m.startswith('codescan.train') or m.split('.')[0] == 'sklearn']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-P", "-c", code], check=True)
