"""One batch in flight across batches: the pipeline submits batch i+1 before it collects batch i.

CPU only. The pipeline is checked with engines that record their submit/collect calls (and
against an engine with only ``embed``, which stays synchronous); the TensorRT runner's
submit/collect is checked on tests/fake_tensorrt and the lazy host device of
tests/test_gpu_paths.py, whose streams run queued work only when an event forces them. That
verifies ordering and buffer use, not that anything runs on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_gpu_paths as gpu
from codescan.engines import protocol
from conftest import textured_image
from test_gpu_paths import IMG, lazy_device

from codescan.scan.pipeline import Scanner
from codescan.scan.plan import ScanConfig

fake_trt, bundle = gpu.fake_trt, gpu.bundle  # the fixtures of tests/test_gpu_paths.py

N_IMAGES = 40
BATCH = 8
DIM = 192  # the stand-in bundle's embedding width


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """40 small images, with a broken image and non-images between them (and at the end)."""
    d = tmp_path_factory.mktemp("overlap")
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        textured_image(rng, int(rng.integers(40, 120)), int(rng.integers(40, 120))).save(d / f"img{i:03d}.png")
    good = (d / "img001.png").read_bytes()
    (d / "img008_broken.png").write_bytes(good[: len(good) // 2])  # an error right after batch 0's last image
    (d / "img020_notes.txt").write_text("not an image\n")  # a skip inside a batch
    for k in range(3):  # a run of skips between two batches
        (d / f"img023_{k}.txt").write_text("x\n")
    (d / "zzz_last.txt").write_text("trailing skip\n")
    return d


class SyncOnly:
    """An engine with only `embed` (like every CPU engine): it goes through protocol.submitter."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.batches: list[int] = []

    def embed(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append(len(crops))
        return self.inner.embed(crops)


class Recording:
    """An asynchronous engine: submit only remembers the batch, collect embeds it; both logged."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.events: list[tuple[str, int]] = []
        self.outstanding: dict[int, np.ndarray] = {}

    def embed(self, crops: np.ndarray) -> np.ndarray:  # pragma: no cover - the pipeline must not call it
        raise AssertionError("the pipeline should use submit/collect")

    def submit(self, crops: np.ndarray) -> int:
        handle = len([e for e in self.events if e[0] == "submit"])
        self.events.append(("submit", handle))
        self.outstanding[handle] = np.array(crops, copy=True)
        return handle

    def collect(self, handle: int) -> np.ndarray:
        self.events.append(("collect", handle))
        return self.inner.embed(self.outstanding.pop(handle))


def scan(scanner: Scanner, engine, folder: Path) -> list[tuple]:
    scanner.engine = engine
    return [(r.path, r.status, r.score, r.error_code) for r in scanner.scan([str(folder)])]


def test_pipeline_submits_the_next_batch_before_collecting_and_keeps_records(home, tree):
    scanner = Scanner(config=ScanConfig(batch_size=BATCH, decode_workers=2))
    real = scanner.engine
    assert protocol.submitter(SyncOnly(real)).__class__ is protocol._Deferred  # CPU engines: embed, wrapped
    sync = SyncOnly(real)
    expected = scan(scanner, sync, tree)
    asynchronous = Recording(real)
    assert protocol.submitter(asynchronous) is asynchronous
    got = scan(scanner, asynchronous, tree)

    # Records: same paths, statuses, scores and order as with the synchronous engine, in walk order.
    assert got == expected
    paths = [p for p, *_ in got]
    assert paths == sorted(str(p) for p in tree.iterdir())
    statuses = [s for _, s, *_ in got]
    assert statuses.count("error") == 1 and statuses.count("skipped") == 5
    assert sum(s in ("real", "fake") for s in statuses) == N_IMAGES
    # The synchronous engine saw the same batches as before: full batches of 8, then the rest.
    assert sync.batches == [BATCH] * (N_IMAGES // BATCH)

    # Order of calls: every batch is collected once, in submit order, and batch i+1 is
    # submitted before batch i is collected (one batch in flight, never more than two).
    events = asynchronous.events
    n = N_IMAGES // BATCH
    submits = [events.index(("submit", i)) for i in range(n)]
    collects = [events.index(("collect", i)) for i in range(n)]
    assert len(events) == 2 * n and sorted(submits + collects) == list(range(2 * n))
    assert collects == sorted(collects) and submits == sorted(submits)
    for i in range(n - 1):
        assert submits[i + 1] < collects[i], f"batch {i + 1} submitted after batch {i} was collected: {events}"
    for i in range(2, n):
        assert collects[i - 2] < submits[i], f"more than two batches in flight: {events}"
    assert not asynchronous.outstanding


def test_pipeline_partial_last_batch_and_no_images(home, tree, tmp_path):
    """A short last batch is submitted before the previous one is collected; a tree without
    images needs no engine at all."""
    scanner = Scanner(config=ScanConfig(batch_size=16, decode_workers=2))
    real = scanner.engine
    expected = scan(scanner, SyncOnly(real), tree)
    rec = Recording(real)
    assert scan(scanner, rec, tree) == expected
    assert rec.events == [("submit", 0), ("submit", 1), ("collect", 0), ("submit", 2), ("collect", 1), ("collect", 2)]
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    rec = Recording(real)
    assert [s for _, s, *_ in scan(scanner, rec, tmp_path)] == ["skipped", "skipped"] and rec.events == []


# ---------------------------------------------------------------------- TensorRT runner, fake


def uploads_and_syncs(dev, runner) -> tuple[list[int], dict[int, int]]:
    """Log positions of the uploads to a slot's device input, and of the first host sync on
    each slot's `finished` event (keyed by slot index)."""
    dev_in = {s.dev_in.data_ptr() for s in runner.slots}
    uploads = [k for k, e in enumerate(dev.log) if e[0] == "copy" and e[3] in dev_in]
    syncs: dict[int, int] = {}
    for k, e in enumerate(dev.log):
        for j, s in enumerate(runner.slots):
            if e[0] == "sync" and e[1] == id(s.finished):
                syncs.setdefault(j, k)
    return uploads, syncs


def check_two_in_flight(fake, dev, engine, a: np.ndarray, b: np.ndarray) -> None:
    """submit(a), submit(b), collect(a), collect(b): b's upload is queued before the host
    waits for a's result, and both results are right."""
    runner = engine.runner
    fake.CALLS.clear()
    dev.log.clear()
    ha = engine.submit(a)
    hb = engine.submit(b)
    uploads, syncs = uploads_and_syncs(dev, runner)
    assert len(uploads) == 2, f"expected two uploads queued by two submits, got {len(uploads)}"
    assert not syncs, "submit waited on a batch's result"
    ra = engine.collect(ha)
    uploads, syncs = uploads_and_syncs(dev, runner)
    first = min(syncs.values())
    assert uploads[1] < first, "batch 2's upload was not queued before batch 1's result was synchronized"
    rb = engine.collect(hb)
    np.testing.assert_array_equal(ra, fake.fake_embedding(a, 192))
    np.testing.assert_array_equal(rb, fake.fake_embedding(b, 192))
    assert ra.dtype == rb.dtype == np.float32 and ra.shape == (len(a), 192) and rb.shape == (len(b), 192)
    execs = [c for c in fake.CALLS if c[0] == "execute_async_v3"]
    assert [c[2]["crops"] for c in execs] == [runner.slots[0].dev_in.data_ptr(), runner.slots[1].dev_in.data_ptr()] or [
        c[2]["crops"] for c in execs
    ] == [runner.slots[1].dev_in.data_ptr(), runner.slots[0].dev_in.data_ptr()], "two batches must use both slots"


def trt_engine(fake, bundle, max_batch: int = 8):
    from codescan.engines import tensorrt_engine as te

    dev = lazy_device(fake)
    return dev, te.TensorRTEngine(bundle, "fp16", max_batch, device=dev, trt=fake, log=lambda m: None)


def test_runner_keeps_two_batches_in_flight(fake_trt, bundle):
    dev, engine = trt_engine(fake_trt, bundle)
    assert protocol.submitter(engine) is engine
    rng = np.random.default_rng(4)

    def crops(n: int) -> np.ndarray:
        return rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8)

    check_two_in_flight(fake_trt, dev, engine, crops(8), crops(5))
    check_two_in_flight(fake_trt, dev, engine, crops(1), crops(8))  # slots reused after collect

    # The pipeline's pattern over many batches: submit i+1, then collect i.
    batches = [crops(n) for n in (8, 8, 3, 8, 1, 7)]
    handles = [engine.submit(batches[0])]
    got = []
    for i in range(1, len(batches)):
        handles.append(engine.submit(batches[i]))
        got.append(engine.collect(handles[i - 1]))
    got.append(engine.collect(handles[-1]))
    for g, c in zip(got, batches):
        np.testing.assert_array_equal(g, fake_trt.fake_embedding(c, 192))

    # A third submit with two in flight frees the oldest slot (its result is kept); an oversized
    # or empty batch falls back to embed; embed itself still works with batches in flight.
    x, y, z, big = crops(4), crops(6), crops(2), crops(19)
    hx, hy = engine.submit(x), engine.submit(y)
    hz = engine.submit(z)
    hbig = engine.submit(big)
    hnone = engine.submit(crops(0))
    direct = crops(3)
    np.testing.assert_array_equal(engine.embed(direct), fake_trt.fake_embedding(direct, 192))
    for h, c in ((hz, z), (hx, x), (hbig, big), (hy, y)):  # any order
        np.testing.assert_array_equal(engine.collect(h), fake_trt.fake_embedding(c, 192))
    assert engine.collect(hnone).shape == (0, 192)
    with pytest.raises(protocol.EngineError, match="collected twice"):
        engine.collect(hx)
    assert not engine.runner._inflight


@pytest.mark.parametrize("mutation", ["sync-in-submit", "submit-is-embed"])
def test_overlap_check_catches_a_synchronous_runner(fake_trt, bundle, monkeypatch, mutation):
    """A runner that waits for the batch inside submit fails the check above (tests the test)."""
    dev, engine = trt_engine(fake_trt, bundle)
    runner = engine.runner
    real_submit = runner.submit
    if mutation == "sync-in-submit":

        def submit(crops):
            ticket = real_submit(crops)
            dev.synchronize(ticket.slot.finished)
            return ticket

    else:

        from codescan.engines.tensorrt_engine import _Ticket

        def submit(crops):
            return _Ticket(None, len(crops), result=runner.embed(crops))

    monkeypatch.setattr(runner, "submit", submit)
    rng = np.random.default_rng(6)
    a, b = (rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8) for n in (8, 5))
    with pytest.raises(AssertionError) as info:
        check_two_in_flight(fake_trt, dev, engine, a, b)
    print(f"\nsynchronous runner ({mutation}) caught: {str(info.value).strip().splitlines()[0]}")


def test_scan_through_the_fake_tensorrt_engine(fake_trt, bundle, tree):
    """The whole pipeline on the fake TensorRT engine: same records as through its embed alone,
    and the next batch's upload is queued before each batch's result is waited for."""
    dev, engine = trt_engine(fake_trt, bundle, max_batch=BATCH)
    scanner = Scanner(engine="onnxruntime", config=ScanConfig(batch_size=BATCH, decode_workers=2))
    expected = scan(scanner, SyncOnly(engine), tree)
    dev.log.clear()
    got = scan(scanner, engine, tree)
    assert got == expected and sum(s in ("real", "fake") for _, s, *_ in got) == N_IMAGES
    uploads, _ = uploads_and_syncs(dev, engine.runner)
    finished = {id(s.finished) for s in engine.runner.slots}
    syncs = [k for k, e in enumerate(dev.log) if e[0] == "sync" and e[1] in finished]
    assert len(uploads) == N_IMAGES // BATCH and len(syncs) >= len(uploads)
    for i in range(len(uploads) - 1):
        assert uploads[i + 1] < syncs[i], f"upload of batch {i + 1} not queued before batch {i}'s result was awaited"


def test_records_behind_a_batch_that_cannot_fill_keep_flowing(home, tmp_path, monkeypatch):
    """One image, then only copies of it and non-images: the batch never fills, and what follows
    it must not pile up in memory until the end of the scan (each copy holds a decoded crop)."""
    import codescan.scan.pipeline as pipeline

    good = tmp_path / "a.png"
    textured_image(np.random.default_rng(5), 90, 70).save(good)
    for i in range(400):
        (tmp_path / f"b{i:03d}.png").write_bytes(good.read_bytes())
    for i in range(30):
        (tmp_path / f"c{i:03d}.txt").write_text("x\n")
    window, _ = pipeline.feed_sizes(BATCH, 1, 2)  # files the decode pool may have in flight
    pulled = []
    listing = pipeline.list_entries

    def counting(arguments, opts):
        for entry in listing(arguments, opts):
            pulled.append(entry)
            yield entry

    monkeypatch.setattr(pipeline, "list_entries", counting)
    scanner = Scanner(config=ScanConfig(batch_size=BATCH, decode_workers=2, evidence="none"))
    sync = SyncOnly(scanner.engine)
    scanner.engine = sync
    records = scanner.scan([str(tmp_path)])
    first = next(records)
    # Behind the window, the scan holds two batches' worth of records waiting for the first crop.
    assert len(pulled) <= window + 4 * BATCH + 1, f"the first record waited for {len(pulled)} of 431 inputs"
    rest = [first, *records]
    assert len(rest) == 431 and len({r.score for r in rest if r.score is not None}) == 1
    assert sync.batches == [1]  # the copies took the original's scores: embedded once


class _ArrivingPool:
    """The decode pool's part the pipeline uses, in this process: outcomes arrive in groups of
    `group` (as a worker's answers do), `arrived` counting those behind the one just handed on."""

    def __init__(self, scanner: Scanner, group: int) -> None:
        from codescan.decoding.decode import configure_pillow
        from codescan.decoding.examine import Examiner

        config = scanner.plan.examine_config(None)
        configure_pillow(config.limits)
        self.examine, self.group, self.arrived = Examiner(config), group, 0

    def outcomes(self, entries, borrow: bool = False, gather: int = 1):
        todo = list(entries)
        for start in range(0, len(todo), self.group):
            part = todo[start : start + self.group]
            for i, entry in enumerate(part, 1):
                self.arrived = len(part) - i
                yield entry, self.examine(entry)

    def give_back(self, outcome) -> None:
        pass

    def batch(self, embedded):
        return np.concatenate([o.decoded.crops for o in embedded]), None


class Quick(SyncOnly):
    """Embeddings in no time: a crop's first pixels, so files still differ."""

    def embed(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append(len(crops))
        return crops.reshape(len(crops), -1)[:, :DIM].astype(np.float32) / 255


class Slow(Quick):
    def embed(self, crops: np.ndarray) -> np.ndarray:
        import time

        from codescan.scan import pipeline

        time.sleep(pipeline.HAND_ON_SECONDS * 1.5)
        return super().embed(crops)


@pytest.mark.parametrize("slow", [False, True])
def test_records_go_on_as_they_arrived_or_a_batch_at_a_time_from_a_slow_engine(home, tree, monkeypatch, slow):
    """A fast engine's records go on in one list per group of outcomes that arrived together (the
    job's work per list, not per batch of 8); a slow engine's as each batch comes out."""
    scanner = Scanner(config=ScanConfig(batch_size=BATCH, decode_workers=1))
    real = scanner.engine
    expected = scan(scanner, Quick(real), tree)
    group = 3 * BATCH + 5
    monkeypatch.setattr(scanner, "_decode_pool", lambda spec, batch_size: _ArrivingPool(scanner, group))
    scanner.engine = (Slow if slow else Quick)(real)
    lists = list(scanner.batches([str(tree)]))
    assert [(r.path, r.status, r.score, r.error_code) for records in lists for r in records] == expected
    judged = [sum(r.status in ("real", "fake") for r in records) for records in lists]
    if slow:
        assert max(judged) == BATCH  # one engine batch per list
    else:
        assert max(judged) >= 2 * BATCH  # a group's batches in one list (the last one in flight waits)
        assert len(lists) <= -(-len(expected) // group) + 1
