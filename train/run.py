"""`codescan train` end to end: samples → RAM pool → encoder → loop → heads → bundle → GPU engine.

The work folder ``<store>/train/<out>/`` keeps the checkpoint and metrics log; the result is an
ordinary bundle ``<store>/weights/<out>/`` that ``codescan scan --weights <out>`` uses as is.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from codescan.train import checkpoint
from codescan.train.config import SCRATCH, TrainConfig
from codescan.train.data import Sample, load_samples, split_by_hash
from codescan.train.fit_heads import HeadValidation, embed_samples, fit_heads, validate
from codescan.train.loop import EpochEvent, Event, Trainer
from codescan.train.optim import amp_for, build_optimizer, grad_scaler
from codescan.train.pool import ImagePool, load_pool

from codescan.core.records import HeadName
from codescan.inputs.read import DecodeFailure
from codescan.model.encoder import EncoderConfig, build_encoder
from codescan.model.heads import Head
from codescan.weights.bundle import Bundle, bundle_meta, load_bundle, write_bundle


class TrainError(ValueError):
    """A training run cannot start or continue as asked; the message says what to do."""


@dataclass(frozen=True)
class PhaseEvent:
    """A stage of the run begins (decoding, fitting heads, ...): one line for the user."""

    text: str


AnyEvent = Event | PhaseEvent


@dataclass(frozen=True)
class TrainResult:
    bundle: Bundle
    validation: dict[HeadName, HeadValidation]
    data: dict[str, Any]
    img_s: float  # mean training throughput of this invocation's epochs (0 when none ran)

    def summary(self) -> dict[str, Any]:
        """The JSON `codescan train` prints on stdout."""
        return {
            "bundle": self.bundle.name,
            "path": str(self.bundle.path),
            "digest": self.bundle.digest,
            "data": self.data,
            "img_s": round(self.img_s, 2),
            "validation": {n: v.to_dict() for n, v in self.validation.items()},
        }


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stored_config(out: str) -> TrainConfig | None:
    """The configuration of the run checkpointed under `out`, or None."""
    ckpt = checkpoint.load(checkpoint.work_dir(out))
    return None if ckpt is None else TrainConfig.from_dict(ckpt.settings["train"])


def resolve_device(choice: str) -> torch.device:
    from codescan.engines.registry import cuda_available

    if choice == "cuda" and not cuda_available():
        raise TrainError("--device cuda: no usable CUDA GPU here (torch.cuda.is_available() is False)")
    return torch.device("cuda" if choice in ("auto", "cuda") and cuda_available() else "cpu")


def _data_digest(train: Sequence[Sample], val: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for part, samples in (("train", train), ("val", val)):
        for s in samples:
            h.update(f"{part}\t{s.label}\t{s.generator}\t{s.path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _data_summary(config: TrainConfig, pool: ImagePool, val: Sequence[Sample]) -> dict[str, Any]:
    generators = Counter(s.generator for s in pool.samples if s.is_fake)
    return {
        "source": config.data,
        "train": {
            "real": int((pool.labels == 0).sum()),
            "fake": int((pool.labels == 1).sum()),
            "generators": dict(sorted(generators.items())),
            "undecodable": len(pool.failures),
        },
        "validation": {"real": sum(not s.is_fake for s in val), "fake": sum(s.is_fake for s in val)},
    }


def _init_model(config: TrainConfig, stored_run: dict[str, Any] | None) -> tuple[torch.nn.Module, EncoderConfig, dict[str, Any]]:
    """A fresh encoder (scratch, timm's ViT init, seeded) or one loaded from an installed bundle.

    On resume the architecture comes from the checkpoint, whose weights replace these anyway.
    """
    torch.manual_seed(config.seed)
    if stored_run is not None:
        encoder = EncoderConfig.from_dict(stored_run["encoder"])
        return build_encoder(encoder), encoder, stored_run["init"]
    if config.init == SCRATCH:
        model = build_encoder(config.encoder)
        model.init_weights("")
        return model, config.encoder, {"from": SCRATCH}
    bundle = load_bundle(config.init)
    model = build_encoder(bundle.encoder_config)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in bundle.encoder_state().items()}, strict=True)
    init = {"from": bundle.name, "digest": bundle.digest, "license": bundle.meta.get("license", "unknown")}
    return model, bundle.encoder_config, init


def _check_classes(pool: ImagePool) -> None:
    labels = pool.labels
    if not (labels == 0).any() or not (labels == 1).any():
        have = "fake" if (labels == 1).any() else "real" if (labels == 0).any() else "no"
        raise TrainError(f"the training split has only {have} images; training needs real and fake ones")


def _compile_for_gpu(bundle: Bundle, say: Callable[[str], None]) -> None:
    """Build the TensorRT engine now where a GPU and TensorRT are present, as `codescan compile` does."""
    from codescan.engines.registry import installed

    if not installed("tensorrt"):
        say("no TensorRT engine built: it needs a CUDA GPU and TensorRT (`codescan compile` builds it on such a machine)")
        return
    from codescan.engines.tensorrt_engine import compile_engine

    info = compile_engine(bundle, "fp16", log=say)
    say(f"TensorRT fp16 engine {'built' if info.built else 'already cached'}: {info.path}")


def _checkpoint_to_continue(folder: Path, config: TrainConfig, resume: bool) -> checkpoint.Checkpoint | None:
    """The checkpoint --resume continues (its settings must equal `config`); None for a fresh run."""
    ckpt = checkpoint.load(folder)
    if not resume:
        if ckpt is not None:
            raise TrainError(
                f"{folder} holds a checkpoint of an earlier run ({ckpt.progress.epochs_done} epochs done); "
                "pass --resume to continue it, or remove that folder to start over"
            )
        return None
    if ckpt is None:
        raise TrainError(f"nothing to resume: {folder} holds no checkpoint")
    differences = config.differences(TrainConfig.from_dict(ckpt.settings["train"]))
    if differences:
        raise TrainError(f"a resumed run keeps its settings; requested vs checkpoint: {'; '.join(differences)}")
    return ckpt


def _load_data(config: TrainConfig, threads: int, on_event: Callable[[AnyEvent], None]) -> tuple[ImagePool, list[Sample]]:
    """(the decoded training split, the validation samples)."""
    train, val = split_by_hash(load_samples(config.data), config.val_fraction)
    on_event(PhaseEvent(f"decoding {len(train)} training images ({len(val)} held out for validation)"))
    pool = load_pool(train, config.context, threads)
    on_event(PhaseEvent(f"{len(pool.samples)} images in RAM ({pool.nbytes / 2**20:.0f} MiB){_left_out(pool.failures)}"))
    _check_classes(pool)
    return pool, val


def _left_out(failures: dict[Any, DecodeFailure]) -> str:
    """'' or '; N left out, undecodable (first: PATH: why)'."""
    if not failures:
        return ""
    path, first = next(iter(failures.items()))
    return f"; {len(failures)} left out, undecodable (first: {path}: {first.message})"


def _train(trainer: Trainer, start: checkpoint.Progress, on_event: Callable[[AnyEvent], None]) -> float:
    """Run the loop; the mean img/s of the epochs run here (0 when none were left)."""
    rates: list[float] = []

    def watch(event: Event) -> None:
        if isinstance(event, EpochEvent):
            rates.append(event.img_s)
        on_event(event)

    trainer.run(start, watch)
    return float(np.mean(rates)) if rates else 0.0


def train_bundle(
    config: TrainConfig,
    resume: bool = False,
    on_event: Callable[[AnyEvent], None] = lambda event: None,
    threads: int | None = None,
) -> TrainResult:
    """Train (or continue training), fit the heads, install the bundle `config.out`."""
    folder = checkpoint.work_dir(config.out)
    ckpt = _checkpoint_to_continue(folder, config, resume)
    stored_run = ckpt.settings["run"] if ckpt is not None else None
    threads = threads or available_cpus()
    torch.set_num_threads(threads)
    device = resolve_device(config.device)
    model, encoder, init = _init_model(config, stored_run)  # before decoding: a missing --init fails fast

    pool, val = _load_data(config, threads, on_event)
    digest = _data_digest(pool.samples, val)
    if stored_run is not None and stored_run["data"] != digest:
        raise TrainError(f"the data in {config.data} changed since the checkpoint; a resumed run needs the same images")
    data = _data_summary(config, pool, val)
    steps_per_epoch = config.steps_per_epoch or math.ceil(len(pool.samples) / config.batch_size)
    run_info = {"encoder": encoder.to_dict(), "init": init, "steps_per_epoch": steps_per_epoch, "data": digest}

    model.to(device)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    amp = amp_for(device)
    scaler = grad_scaler(device, amp)
    if ckpt is not None:
        ckpt.restore(model, optimizer, scaler)
        checkpoint.trim_metrics(folder, ckpt.progress.epochs_done)
        start = ckpt.progress
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / checkpoint.METRICS).unlink(missing_ok=True)
        start = checkpoint.Progress(0, 0)
    on_event(PhaseEvent(f"training on {device.type} ({'autocast ' + amp if amp != 'off' else 'fp32'}), {threads} threads"))
    trainer = Trainer(config, pool, model, optimizer, scaler, amp, steps_per_epoch, folder, run_info, threads)
    img_s = _train(trainer, start, on_event)

    train = pool.samples
    del pool, trainer  # the heads are fit on embeddings of the scanner's own crops, below
    state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    heads, validation = _fit_heads(encoder, state, train, val, on_event)
    meta = bundle_meta(
        config.out,
        encoder,
        {n: v.threshold.threshold for n, v in validation.items()},
        source={"type": "trained", "revision": None, "init": init, "data": config.data},
        license=init.get("license", "unspecified"),
    )
    meta["training"] = {
        "config": config.to_dict(),
        "steps_per_epoch": steps_per_epoch,
        "data": data,
        "threshold_rule": "max balanced accuracy on the validation split; natural (0) when it lacks a class",
        "validation": {n: v.to_dict() for n, v in validation.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    bundle = write_bundle(config.out, state, heads, meta)
    _compile_for_gpu(bundle, lambda text: on_event(PhaseEvent(text)))
    return TrainResult(bundle=bundle, validation=validation, data=data, img_s=img_s)


def _fit_heads(
    encoder: EncoderConfig,
    state: dict[str, np.ndarray],
    train: Sequence[Sample],
    val: Sequence[Sample],
    on_event: Callable[[AnyEvent], None],
) -> tuple[dict[HeadName, Head], dict[HeadName, HeadValidation]]:
    from codescan.engines.torch_engine import TorchEngine

    engine = TorchEngine(encoder, state, precision="fp32")
    on_event(PhaseEvent(f"embedding {len(train)} training + {len(val)} validation images (the scanner's decoder and crop, torch fp32)"))
    fit_on, held = embed_samples(train, engine), embed_samples(val, engine)
    if fit_on.failures or held.failures:
        on_event(PhaseEvent(f"scan cannot decode some images{_left_out({**fit_on.failures, **held.failures})}"))
    on_event(PhaseEvent("fitting heads (logistic regression, 1-NN cosine, one-class SVM) and thresholds"))
    heads = fit_heads(fit_on.emb, fit_on.is_fake)
    return heads, validate(heads, held)


def requested_config(out: str, given: dict[str, Any], resume: bool) -> TrainConfig:
    """The CLI's options as a config: over the defaults, or with --resume over the checkpoint's settings.

    Only options the user gave count as requests; a resumed run then refuses any that differ
    from the checkpoint (see :func:`train_bundle`).
    """
    if not resume:
        if "data" not in given:
            raise TrainError("--data is required: a folder with real/ and fake/<generator>/, or a CSV manifest")
        return TrainConfig(out=out, **given)
    base = stored_config(out)
    if base is None:
        raise TrainError(f"--resume: no checkpoint in {checkpoint.work_dir(out)}; start the run without --resume")
    return TrainConfig.from_dict({**base.to_dict(), **given})
