"""codescan.weights.unpickle: official scikit-learn head pickles read without running them.

Three things are pinned here:

- parity: heads pickled by an old scikit-learn (fixtures/legacy_sklearn13, made by
  fixtures/make_legacy_heads.py with scikit-learn 1.3.2 / numpy 1.26) and by the installed one
  give the scores and verdicts scikit-learn itself computes;
- safety: a pickle that names anything outside the allow-list (os.system, eval, Popen, ...),
  hides such a call inside an estimator, smuggles an object array into a joblib file or abuses
  the admitted numpy callables is refused with UnsafePickleError, and nothing of it runs (each
  payload would create a marker file);
- the CLI: `codescan weights import` refuses such a folder with one line and exit code 2.
"""

from __future__ import annotations

import copyreg
import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from codescan.model.heads import KnnHead, LinearHead, OcsvmHead
from codescan.model.sklearn_heads import UnsafePickleError, estimator_to_head
from codescan.weights.unpickle import (
    HeadLimits,
    RestrictedUnpickler,
    open_head_stream,
    restricted_load,
)

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_sklearn13"
CODESCAN = str(Path(sys.executable).parent / "codescan")
FILES = {
    "linear": "linear_tot_classifier_epoch-32.sav",
    "knn": "knn_tot_classifier_epoch-32.sav",
    "ocsvm": "ocsvm_kernel_poly_gamma_auto_nu_0_1_crop.joblib",
}
DIM = 192


def load_head(path: Path):
    return estimator_to_head(restricted_load(path))


def verdicts(scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores) > 0  # HeadSet.judge at the default threshold 0: fake iff score > 0


# --------------------------------------------------------------------------------------------
# Legacy fixtures: pickled by scikit-learn 1.3.2 + numpy 1.26 (numpy.core paths, 1.3 attributes)


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "expected.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_legacy_fixtures_are_small_and_from_sklearn13(expected):
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 1_000_000
    assert "scikit-learn=1.3.2" in expected["versions"].tolist()
    assert any(v.startswith("numpy=1.") for v in expected["versions"].tolist())
    # The ocsvm file is joblib-compressed (zlib), the other two plain joblib pickles.
    assert (FIXTURES / FILES["ocsvm"]).read_bytes()[:1] == b"\x78"
    assert (FIXTURES / FILES["linear"]).read_bytes()[:1] == b"\x80"
    # Every head gives both verdicts on the stored queries, or verdict parity would say little.
    assert set(expected["linear_predict"].tolist()) == {0, 1}
    assert set(expected["knn_predict"].tolist()) == {0, 1}
    assert set(expected["ocsvm_predict"].tolist()) == {-1, 1}


def test_legacy_linear(expected):
    name, head = load_head(FIXTURES / FILES["linear"])
    assert name == "linear" and isinstance(head, LinearHead) and head.coef.shape == (DIM,)
    score = head.score(expected["queries"])
    # Both sides compute x·w + b in float64 from the same float32 queries and float64 weights;
    # only the summation order (BLAS gemm vs gemv) can differ: ~1e-16 relative. Measured: 0.0.
    np.testing.assert_allclose(score, expected["linear_decision"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(verdicts(score), expected["linear_predict"] == 1)


def test_legacy_knn(expected):
    name, head = load_head(FIXTURES / FILES["knn"])
    assert name == "knn" and isinstance(head, KnnHead) and head.bank.shape == (60, DIM)
    score = head.score(expected["queries"])
    # knn_score was computed by sklearn's cosine_similarity in float64: same math, different
    # norm/dot routines, so agreement to a few ulps (measured 3e-16; scores are of order 1e-2).
    np.testing.assert_allclose(score, expected["knn_score"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(verdicts(score), expected["knn_predict"] == 1)
    # sklearn's own neighbour (found in float32 for float32 queries) has the predicted label and
    # its cosine distance matches our best similarity to float32 precision.
    np.testing.assert_array_equal(head.labels[expected["knn_neighbor"]], expected["knn_predict"])
    q = expected["queries"].astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    bank = head.bank.astype(np.float64) / np.linalg.norm(head.bank.astype(np.float64), axis=1, keepdims=True)
    best = (q @ bank.T).max(axis=1)
    np.testing.assert_allclose(1.0 - best, expected["knn_distance"], rtol=0, atol=1e-6)
    # The closest call among these queries is still far above float32 rounding (see
    # test_current_sklearn_knn_near_ties for what happens below it).
    assert np.abs(score).min() > 1e-5


def test_legacy_ocsvm(expected):
    name, head = load_head(FIXTURES / FILES["ocsvm"])
    assert name == "ocsvm" and isinstance(head, OcsvmHead)
    assert (head.kernel, head.degree, head.coef0, head.gamma) == ("poly", 3, 0.0, 1.0 / DIM)
    score = head.score(expected["queries"])
    # libsvm sums alpha_i * (gamma <x, sv_i>)^3 one support vector at a time in double; we use
    # BLAS. Individual terms are up to ~1e2, so the sums agree to ~1e-13 absolute (measured
    # 3e-13 on decision values up to 35): 1e-11 relative to the largest value is 30x headroom.
    scale = np.abs(expected["ocsvm_decision"]).max()
    np.testing.assert_allclose(-score, expected["ocsvm_decision"], rtol=0, atol=1e-11 * scale)
    # sklearn's +1 = inlier = real (the SVM was fit on real images only).
    np.testing.assert_array_equal(verdicts(score), expected["ocsvm_predict"] == -1)


def test_legacy_pickles_need_only_these_globals():
    """What real joblib head files ask find_class for: no _reconstruct, no scalar, no numpy.core."""
    seen: set[tuple[str, str]] = set()

    class Spy(RestrictedUnpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for fname in FILES.values():
        path = FIXTURES / fname
        with open(path, "rb") as fh:
            Spy(open_head_stream(fh, path.stat().st_size, HeadLimits()), HeadLimits()).load()
    assert seen == {
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("sklearn.linear_model._logistic", "LogisticRegression"),
        ("sklearn.neighbors._classification", "KNeighborsClassifier"),
        ("sklearn.svm._classes", "OneClassSVM"),
    }


# --------------------------------------------------------------------------------------------
# The installed scikit-learn: fit, dump into tmp_path, read back, compare with sklearn itself


@pytest.fixture(scope="module")
def fitted():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(7)
    base = rng.normal(size=DIM) * 2.0
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)
    labels = np.arange(80) % 2
    emb = (base + np.where(labels[:, None] == 0, 1.0, -1.0) * direction + 0.7 * rng.normal(size=(80, DIM)))
    emb = emb.astype(np.float32)
    queries = (base + rng.uniform(-2, 2, size=(300, 1)) * direction + 0.7 * rng.normal(size=(300, DIM)))
    return {
        "emb": emb,
        "labels": labels,
        "queries": queries.astype(np.float32),
        "linear": LogisticRegression(max_iter=5000).fit(emb, labels),
        "knn": KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(emb, labels),
        "ocsvm": OneClassSVM(kernel="poly", gamma="auto", nu=0.1).fit(emb[labels == 0]),
    }


DUMPS = {
    "joblib": lambda est, path: joblib.dump(est, path),
    "joblib-zlib3": lambda est, path: joblib.dump(est, path, compress=3),
    "joblib-lzma": lambda est, path: joblib.dump(est, path, compress=("lzma", 1)),
    # A plain pickle.dump .sav (default protocol 4): arrays via numpy's _reconstruct + setstate.
    "pickle": lambda est, path: pickle.dump(est, open(path, "wb")),
}


def _float64_scores(est, name: str, x: np.ndarray) -> np.ndarray:
    """codescan's definition of each score, evaluated in float64 straight from sklearn's attributes."""
    x = x.astype(np.float64)
    if name == "linear":
        return x @ est.coef_[0].astype(np.float64) + float(est.intercept_[0])
    if name == "knn":
        from sklearn.metrics.pairwise import cosine_similarity

        bank = np.asarray(est._fit_X, dtype=np.float64)
        sim = cosine_similarity(x, bank)
        lab = est.classes_[est._y]
        return sim[:, lab == 1].max(axis=1) - sim[:, lab == 0].max(axis=1)
    return -est.decision_function(x)  # libsvm works in double whatever the input dtype


@pytest.mark.parametrize("dump", sorted(DUMPS))
@pytest.mark.parametrize("name", ["linear", "knn", "ocsvm"])
def test_current_sklearn_roundtrip(fitted, tmp_path, name, dump):
    est = fitted[name]
    path = tmp_path / FILES[name]
    DUMPS[dump](est, path)
    got_name, head = load_head(path)
    assert got_name == name
    x = fitted["queries"]  # float32, like encoder embeddings
    score = head.score(x)
    want_fake = est.predict(x) == (-1 if name == "ocsvm" else 1)
    assert {True, False} <= set(want_fake.tolist()), f"{name}: sklearn verdicts all {want_fake[0]}"
    # Verdict parity. Where sklearn works in float64 (libsvm always; LogisticRegression with
    # float64 weights) it is exact on every query. Recent scikit-learn keeps float32 weights for a
    # LogisticRegression fit on float32, and its cosine kNN on float32 data is float32, so there
    # sklearn's own verdict is only defined to float32 rounding: a query whose float64 score is
    # within 2e-6 of the threshold may legitimately go either way (the near-threshold tests below
    # show that nothing beyond that band ever differs). Such queries must be rare here.
    float32_math = name == "knn" or (name == "linear" and est.coef_.dtype == np.float32)
    band = np.abs(score) < 2e-6 if float32_math else np.zeros(len(x), bool)
    assert band.sum() <= 3
    np.testing.assert_array_equal(verdicts(score)[~band], want_fake[~band])
    # The scores are codescan's float64 formulas applied to the very arrays sklearn holds.
    want = _float64_scores(est, name, x)
    np.testing.assert_allclose(score, want, rtol=0, atol=1e-12 * max(1.0, np.abs(want).max()))
    if name == "linear":
        # And sklearn's own decision function, to its working precision.
        tol = 1e-5 if est.coef_.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(score, est.decision_function(x), rtol=0, atol=tol * np.abs(want).max())
    if name == "ocsvm":
        # libsvm sums support vectors one at a time, we use BLAS: agreement to ~1e-15 relative.
        np.testing.assert_allclose(-score, est.decision_function(x), rtol=0, atol=1e-11 * np.abs(want).max())


def test_current_sklearn_linear_near_threshold(fitted):
    """Queries a hair's breadth from the hyperplane.

    A model fit on float64 (as scikit-learn 1.3, which made the official heads, always did) has
    float64 weights, and sklearn's decision function is then float64 like codescan's: verdicts
    are identical however close to the threshold. A model fit on float32 by current scikit-learn
    has float32 weights and sklearn evaluates float32 queries in float32: verdicts can then
    differ, but only within float32 rounding of the threshold.
    """
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(max_iter=5000).fit(fitted["emb"].astype(np.float64), fitted["labels"])
    assert est.coef_.dtype == np.float64
    _, head = estimator_to_head(_roundtrip_state(est))
    w, b = est.coef_[0], est.intercept_[0]
    rng = np.random.default_rng(1)
    x = fitted["queries"][:200].astype(np.float64)
    on_plane = x - ((x @ w + b) / (w @ w))[:, None] * w
    # Signed distances from 1e-3 down to 1e-10 (in units of |w|), both sides.
    offsets = rng.choice([-1.0, 1.0], len(x)) * 10.0 ** rng.uniform(-10, -3, len(x))
    q = on_plane + offsets[:, None] * (w / np.linalg.norm(w))
    want = est.decision_function(q)
    assert np.abs(want).min() < 1e-9 and {True, False} <= set((want > 0).tolist())
    score = head.score(q)
    # float64 on both sides: the scores differ by rounding (~1e-15), far below the smallest margin.
    assert np.abs(score - want).max() < 1e-13 < np.abs(want).min()
    np.testing.assert_array_equal(verdicts(score), est.predict(q) == 1)

    est32 = fitted["linear"]
    assert est32.coef_.dtype == np.float32
    _, head32 = estimator_to_head(_roundtrip_state(est32))
    w32, b32 = est32.coef_[0].astype(np.float64), float(est32.intercept_[0])
    on_plane = x - ((x @ w32 + b32) / (w32 @ w32))[:, None] * w32
    q32 = (on_plane + offsets[:, None] * (w32 / np.linalg.norm(w32))).astype(np.float32)
    s32 = head32.score(q32)
    assert_agree_outside_band(s32, est32.predict(q32) == 1, band=1e-5, min_clear=50)


def test_current_sklearn_ocsvm_near_threshold(fitted):
    """Bisect between an inlier and an outlier to |decision| ~1e-9: verdicts identical."""
    est = fitted["ocsvm"]
    _, head = estimator_to_head(_roundtrip_state(est))
    x = fitted["queries"].astype(np.float64)
    dec = est.decision_function(x)
    inliers, outliers = x[dec > 0][:10], x[dec < 0][:10]
    assert len(inliers) and len(outliers)
    near = []
    point = lambda a, c, t: (1 - t) * a + t * c  # noqa: E731
    decide = lambda p: est.decision_function(p[None])[0]  # noqa: E731
    for a, c in zip(inliers, outliers):
        lo, hi = 0.0, 1.0  # decision(lo) > 0 > decision(hi)
        d_lo, d_hi = decide(a), decide(c)
        while max(d_lo, -d_hi) > 1e-8:  # stop at |decision| ~1e-9..1e-8 (terms are ~1e1)
            mid = (lo + hi) / 2
            d = decide(point(a, c, mid))
            lo, d_lo, hi, d_hi = (mid, d, hi, d_hi) if d > 0 else (lo, d_lo, mid, d)
        near += [point(a, c, lo), point(a, c, hi)]
    q = np.array(near)
    want = est.decision_function(q)
    assert np.abs(want).max() < 1e-8 and {True, False} <= set((want > 0).tolist())
    score = head.score(q)
    # Both sides compute in float64: ~1e-14 apart, while the closest query is ~1e-10 from 0.
    assert np.abs(-score - want).max() < 1e-12 < np.abs(want).min()
    np.testing.assert_array_equal(verdicts(score), est.predict(q) == -1)


def test_current_sklearn_knn_near_ties(fitted):
    """Near ties between a fake and a real neighbour.

    In float64 (bank and queries) sklearn and codescan agree however close the tie. With float32
    embeddings, as the encoder produces, sklearn computes cosine distances in float32 while
    codescan uses float64: a verdict may then differ, but only where the two best similarities
    are within float32 rounding (|score| < ~1e-6); everywhere else they are identical.
    """
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(3)
    emb, labels = fitted["emb"], fitted["labels"]
    unit = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    i = rng.choice(np.flatnonzero(labels == 0), 400)
    j = rng.choice(np.flatnonzero(labels == 1), 400)
    q = unit[i] + unit[j] + rng.normal(size=(400, DIM)) * 10.0 ** rng.uniform(-10, -3, (400, 1))

    est64 = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(emb.astype(np.float64), labels)
    head64 = KnnHead(bank=emb.astype(np.float64), labels=labels)
    s64 = head64.score(q)
    assert np.abs(s64).min() < 1e-8
    np.testing.assert_array_equal(verdicts(s64), est64.predict(q) == 1)

    est32 = fitted["knn"]
    _, head32 = estimator_to_head(_roundtrip_state(est32))
    q32 = q.astype(np.float32)
    s32 = head32.score(q32)
    assert_agree_outside_band(s32, est32.predict(q32) == 1, band=2e-6, min_clear=100)


def assert_agree_outside_band(scores: np.ndarray, sklearn_fake: np.ndarray, band: float, min_clear: int) -> None:
    """Verdicts may differ from sklearn's float32 arithmetic only for |score| < band; elsewhere identical."""
    differ = verdicts(scores) != sklearn_fake
    assert np.all(np.abs(scores[differ]) < band), np.abs(scores[differ]).max()
    clear = np.abs(scores) >= band
    assert clear.sum() > min_clear
    np.testing.assert_array_equal(verdicts(scores[clear]), sklearn_fake[clear])


def _roundtrip_state(est):
    """An estimator's state as restricted_load would give it (joblib dump -> restricted load)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "head.sav"
        joblib.dump(est, path)
        return restricted_load(path)


# --------------------------------------------------------------------------------------------
# Estimators of the right class but the wrong kind: a clear ValueError, not an unsafe-pickle one


def _wrong_kind_cases():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    y2, y3 = np.arange(30) % 2, np.arange(30) % 3
    return {
        "logreg-3-classes": (lambda: LogisticRegression(max_iter=500).fit(x, y3), r"classes_ == \[0, 1\]"),
        "logreg-labels-1-2": (lambda: LogisticRegression(max_iter=500).fit(x, y2 + 1), r"classes_ == \[0, 1\]"),
        "knn-3-neighbours": (lambda: KNeighborsClassifier(n_neighbors=3, metric="cosine").fit(x, y2), "n_neighbors=1"),
        "knn-euclidean": (lambda: KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x, y2), "cosine"),
        "ocsvm-rbf": (lambda: OneClassSVM(kernel="rbf", nu=0.1).fit(x), "poly kernel"),
    }


@pytest.mark.parametrize("case", sorted(_wrong_kind_cases()))
def test_wrong_kind_of_estimator_is_a_clear_value_error(tmp_path, case):
    make, message = _wrong_kind_cases()[case]
    joblib.dump(make(), tmp_path / "head.sav")
    state = restricted_load(tmp_path / "head.sav")  # loads fine: right classes, plain arrays
    with pytest.raises(ValueError, match=message) as info:
        estimator_to_head(state)
    assert not isinstance(info.value, UnsafePickleError)


def test_knn_with_a_tree_is_refused(tmp_path):
    """A tree-based KNeighborsClassifier pickles its Cython KDTree: not admitted (and not CoDE's)."""
    from sklearn.neighbors import KNeighborsClassifier

    x = np.random.default_rng(0).normal(size=(30, 8))
    joblib.dump(KNeighborsClassifier(n_neighbors=1, algorithm="kd_tree").fit(x, np.arange(30) % 2), tmp_path / "h.sav")
    with pytest.raises(UnsafePickleError, match="refused to load sklearn.neighbors._kd_tree"):
        restricted_load(tmp_path / "h.sav")


def test_not_an_estimator_is_refused(tmp_path):
    joblib.dump({"coef_": np.zeros(3)}, tmp_path / "head.sav")
    with pytest.raises(UnsafePickleError, match="expected a scikit-learn head"):
        estimator_to_head(restricted_load(tmp_path / "head.sav"))


# --------------------------------------------------------------------------------------------
# Malicious pickles: refused, and the payload never runs


def _touch_payloads(marker: Path) -> dict[str, bytes]:
    """Hand-assembled pickles whose only effect, if run, is to create `marker`."""
    m = str(marker).encode()
    cmd = b"touch " + m
    src = f"open({str(marker)!r}, 'w').close()".encode()
    return {
        # protocol 0: GLOBAL 'os system', MARK, STRING, TUPLE, REDUCE
        "os.system": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "posix.system": b"cposix\nsystem\n(S'" + cmd + b"'\ntR.",
        "builtins.eval": b"cbuiltins\neval\n(S\"" + src + b"\"\ntR.",
        "builtins.exec": b"cbuiltins\nexec\n(S\"" + src + b"\"\ntR.",
        "__builtin__.eval": b"c__builtin__\neval\n(S\"" + src + b"\"\ntR.",
        "subprocess.Popen": b"csubprocess\nPopen\n((S'touch'\nS'" + m + b"'\nltR.",
        # protocol 4: STACK_GLOBAL (module and name as strings on the stack)
        "stack-global": b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.",
        # INST opcode (protocol 0): instantiates the class with the marked args
        "inst": b"(S'" + cmd + b"'\nios\nsystem\n.",
    }


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _LogisticRegression(state: dict):
    """A real sklearn LogisticRegression (so its GLOBAL is allowed) with the given __dict__."""
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression.__new__(LogisticRegression)
    est.__dict__.update(state)
    return est


class _ForgedPointer:
    """Pickles as numpy.ndarray((1,), numpy.ndarray, b"AAAAAAAA"): an object array whose item is
    the address 0x4141414141414141. Using it (np.asarray(..., float)) crashes the process."""

    def __reduce__(self):
        return (np.ndarray, ((1,), np.ndarray, b"A" * 8))


@pytest.fixture()
def marker(tmp_path) -> Path:
    """Where each payload would leave its trace (see test_payloads_are_live)."""
    path = tmp_path / "MARKER"
    assert not path.exists()
    return path


@pytest.mark.parametrize("payload", sorted(_touch_payloads(Path("/x"))))
def test_malicious_globals_are_refused(tmp_path, marker, payload):
    path = tmp_path / "linear_tot_classifier_epoch-32.sav"
    path.write_bytes(_touch_payloads(marker)[payload])
    with pytest.raises(UnsafePickleError, match="refused"):
        restricted_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", sorted(_touch_payloads(Path("/x"))))
def test_payloads_are_live(tmp_path, marker, payload):
    """Sanity for the test above: plain pickle.load does run each payload (in a child process)."""
    path = tmp_path / "evil.sav"
    path.write_bytes(_touch_payloads(marker)[payload])
    code = f"import pickle; r = pickle.load(open({str(path)!r}, 'rb')); getattr(r, 'wait', int)()"  # Popen
    subprocess.run([sys.executable, "-P", "-c", code], check=True, capture_output=True)
    assert marker.exists()


def test_forbidden_class_nested_in_an_allowed_estimator(tmp_path, marker):
    # Top-level GLOBAL is the real LogisticRegression (allowed); coef_ is an os.system call.
    state = {"classes_": np.array([0, 1]), "coef_": _Touch(marker), "intercept_": np.zeros(1)}
    for name, dump in DUMPS.items():
        path = tmp_path / f"{name}.sav"
        dump(_LogisticRegression(state), path)
        assert b"LogisticRegression" in path.read_bytes() or name.startswith("joblib-")
        with pytest.raises(UnsafePickleError, match="refused to load posix.system"):
            restricted_load(path)
    assert not marker.exists()


def test_extension_registry_goes_through_find_class(tmp_path, marker):
    """EXT1 opcodes look names up in copyreg's registry; that path is filtered too."""
    copyreg.add_extension("posix", "system", 0xE7)
    try:
        cmd = f"touch {marker}".encode()
        (tmp_path / "h.sav").write_bytes(b"\x80\x02\x82\xe7\x8c" + bytes([len(cmd)]) + cmd + b"\x85R.")
        with pytest.raises(UnsafePickleError, match="posix.system"):
            restricted_load(tmp_path / "h.sav")
    finally:
        copyreg.remove_extension("posix", "system", 0xE7)
    assert not marker.exists()


@pytest.mark.parametrize("compress", [0, 3])
def test_object_array_in_joblib_file_is_refused(tmp_path, marker, compress):
    """joblib reads object arrays with a nested pickle.load; ours refuses the object dtype itself."""
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = "harmless", _Touch(marker)
    path = tmp_path / "knn_tot_classifier_epoch-32.sav"
    joblib.dump(arr, path, compress=compress)
    # Also as an estimator attribute, which is where it would hide in a real head file.
    path2 = tmp_path / "linear_tot_classifier_epoch-32.sav"
    joblib.dump(_LogisticRegression({"classes_": np.array([0, 1]), "coef_": arr}), path2, compress=compress)
    for p in (path, path2):
        with pytest.raises(UnsafePickleError, match=r"refused dtype O8"):
            restricted_load(p)
    assert not marker.exists()


def test_object_array_in_joblib_file_is_live(tmp_path, marker):
    """Sanity for the test above: joblib.load itself would run the payload (in a child)."""
    arr = np.empty(1, dtype=object)
    arr[0] = _Touch(marker)
    joblib.dump(arr, tmp_path / "a.sav")
    code = f"import joblib; joblib.load({str(tmp_path / 'a.sav')!r})"
    subprocess.run([sys.executable, "-P", "-c", code], check=False, capture_output=True)
    assert marker.exists()


# Admitted numpy callables used as weapons: raw pickle bytes laid out as object pointers, or
# dtypes rewritten by __setstate__ to reach past their buffer. These would crash (or worse) when
# the arrays are used, so they must be refused at load time.
_BYTES8 = b"C\x08AAAAAAAA"  # SHORT_BINBYTES, 8 bytes: a fake PyObject* 0x4141414141414141
_FORGED = {
    # numpy.ndarray((1,), <any admitted class, which numpy reads as dtype=object>, b"AAAAAAAA")
    "ndarray-reduce": b"\x80\x03cnumpy\nndarray\nK\x01\x85cnumpy\nndarray\n" + _BYTES8 + b"\x87R.",
    "ndarray-newobj": b"\x80\x03cnumpy\nndarray\nK\x01\x85cnumpy\nndarray\n" + _BYTES8 + b"\x87\x81.",
    "ndarray-newobj-ex": b"\x80\x04cnumpy\nndarray\nK\x01\x85cnumpy\nndarray\n" + _BYTES8 + b"\x87}\x92.",
    "ndarray-obj": b"\x80\x03(cnumpy\nndarray\nK\x01\x85cnumpy\nndarray\n" + _BYTES8 + b"o.",
    "ndarray-inst": b"(K\x01\x85cnumpy\nndarray\n" + _BYTES8 + b"inumpy\nndarray\n.",
    # numpy.dtype('O'), and StringDType (its items are pointers too)
    "dtype-object": b"\x80\x03cnumpy\ndtype\nX\x01\x00\x00\x00O\x85R.",
    "dtype-string": b"\x80\x03cnumpy\ndtype\nX\x01\x00\x00\x00T\x85R.",
    "stringdtype-class": b"\x80\x03cnumpy.dtypes\nStringDType\n)R.",
    "objectdtype-class": b"\x80\x03cnumpy.dtypes\nObjectDType\n)R.",
    "dtype-structured-object": b"\x80\x03cnumpy\ndtype\n]X\x01\x00\x00\x00aX\x01\x00\x00\x00O\x86a\x85R.",
}


def _dtype_setstate(state: bytes) -> bytes:
    """numpy.dtype('V8', False, True) then BUILD with a hand-written __setstate__ tuple."""
    return b"\x80\x03cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R" + state + b"b."


_F8 = b"cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R"
# (3, '|', subarray, names, fields, elsize, alignment, flags)
_FORGED["dtype-setstate-subarray"] = _dtype_setstate(
    b"(K\x03X\x01\x00\x00\x00|" + _F8 + b"M\xe8\x03\x85\x86NNK\x08K\x01K\x00t"
)
_FORGED["dtype-setstate-fields"] = _dtype_setstate(
    b"(K\x03X\x01\x00\x00\x00|NX\x01\x00\x00\x00a\x85}X\x01\x00\x00\x00a" + _F8 + b"Kd\x86sK\x08K\x01K\x00t"
)
_FORGED["dtype-setstate-flags"] = (
    b"\x80\x03cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb."
)


@pytest.mark.parametrize("name", sorted(_FORGED))
def test_numpy_callables_cannot_forge_memory(tmp_path, name):
    if name == "dtype-string" and np.lib.NumpyVersion(np.__version__) < "2.0.0":
        pytest.skip("numpy < 2 has no StringDType ('T')")
    path = tmp_path / "head.sav"
    path.write_bytes(_FORGED[name])
    with pytest.raises(UnsafePickleError, match="refused"):
        restricted_load(path)


def test_forged_pickles_are_well_formed():
    """The forged bytes are valid pickles: with plain numpy they load into the dangerous objects."""
    dt_obj = pickle.loads(_FORGED["dtype-object"])
    assert dt_obj == np.dtype("O")
    assert pickle.loads(_FORGED["dtype-structured-object"]).hasobject
    assert pickle.loads(_FORGED["dtype-setstate-subarray"]).subdtype is not None
    assert pickle.loads(_FORGED["dtype-setstate-fields"]).fields is not None
    assert pickle.loads(_FORGED["dtype-setstate-flags"]).hasobject  # a float64 claiming to hold objects
    for name in ("ndarray-reduce", "ndarray-newobj", "ndarray-newobj-ex", "ndarray-obj", "ndarray-inst"):
        arr = pickle.loads(_FORGED[name])
        # An object array whose one item is the pointer 0x4141414141414141: reading arr[0] (or
        # letting pytest print arr) would crash, so only its metadata is looked at.
        forged = arr.dtype == object and arr.shape == (1,) and not arr.flags.owndata
        del arr
        assert forged, name


# --------------------------------------------------------------------------------------------
# The CLI: `codescan weights import` of an official-layout folder


def _official_folder(root: Path, encoder_files: Path) -> Path:
    folder = root / "CoDE"
    (folder / "sklearn").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        os.link(encoder_files / f, folder / f)
    for fname in FILES.values():
        (folder / "sklearn" / fname).write_bytes((FIXTURES / fname).read_bytes())
    return folder


def _import(folder: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CODESCAN_HOME": str(home)}
    env.pop("CODESCAN_DEBUG", None)
    return subprocess.run(
        [CODESCAN, "weights", "import", str(folder)], env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_imports_legacy_heads(tmp_path, encoder_files, expected):
    folder = _official_folder(tmp_path, encoder_files)
    p = _import(folder, tmp_path / "home")
    assert p.returncode == 0, p.stderr
    from codescan.model.heads import load_heads

    stored = tmp_path / "home" / "weights" / "code" / "heads.safetensors"
    heads = load_heads(stored.read_bytes(), str(stored))
    q = expected["queries"]
    np.testing.assert_array_equal(verdicts(heads["linear"].score(q)), expected["linear_predict"] == 1)
    np.testing.assert_array_equal(verdicts(heads["knn"].score(q)), expected["knn_predict"] == 1)
    np.testing.assert_array_equal(verdicts(heads["ocsvm"].score(q)), expected["ocsvm_predict"] == -1)


@pytest.mark.parametrize("payload", ["os.system", "nested", "object-array", "forged-pointer"])
def test_cli_refuses_malicious_head(tmp_path, encoder_files, marker, payload):
    folder = _official_folder(tmp_path, encoder_files)
    evil = folder / "sklearn" / FILES["ocsvm"]  # sorted last: the two good heads load first
    if payload == "os.system":
        evil.write_bytes(_touch_payloads(marker)["os.system"])
    elif payload == "nested":
        joblib.dump(_LogisticRegression({"classes_": np.array([0, 1]), "coef_": _Touch(marker)}), evil, compress=3)
    elif payload == "object-array":
        arr = np.empty(1, dtype=object)
        arr[0] = _Touch(marker)
        joblib.dump(arr, evil)
    else:  # without the ndarray-call guard, import died here with SIGSEGV
        joblib.dump(_LogisticRegression({"classes_": np.array([0, 1]), "coef_": _ForgedPointer()}), evil)
    home = tmp_path / "home"
    p = _import(folder, home)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("codescan: error: ") and "refused" in lines[0], lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert not marker.exists()
    assert not (home / "weights" / "code").exists()


def test_protocol2_plain_pickle_loads(tmp_path):
    """Protocol 2 (Python-2-era .sav files) rebuilds bytes through _codecs.encode(str, 'latin1')."""
    import pickle

    from sklearn.linear_model import LogisticRegression

    from codescan.model.sklearn_heads import estimator_to_head
    from codescan.weights.unpickle import restricted_load

    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 192))
    y = (x[:, 0] > 0).astype(int)
    clf = LogisticRegression(max_iter=2000).fit(x, y)
    path = tmp_path / "linear.sav"
    path.write_bytes(pickle.dumps(clf, protocol=2))
    name, head = estimator_to_head(restricted_load(path))
    assert name == "linear"
    q = rng.normal(size=(10, 192))
    np.testing.assert_allclose(head.score(q), clf.decision_function(q), rtol=1e-12, atol=1e-12)


def test_codecs_encode_is_limited_to_latin1(tmp_path):
    from codescan.model.sklearn_heads import UnsafePickleError
    from codescan.weights.unpickle import restricted_load

    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    path = tmp_path / "x.sav"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="latin1"):
        restricted_load(path)
