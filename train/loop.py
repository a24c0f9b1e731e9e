"""The training loop: views → encoder → CoDE loss → AdamW, one checkpoint per epoch.

A step's images, its views and its learning rate are pure functions of (seed, epoch, step)
(see :mod:`.sampling`, :mod:`.optim`), and the model, optimiser, loss scaler and torch RNG are
checkpointed after every epoch, so resuming from a checkpoint reaches the same weights as an
uninterrupted run, tensor for tensor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from codescan.train import checkpoint
from codescan.train.augment import ViewKind, make_view
from codescan.train.config import TrainConfig
from codescan.train.loss import LossTerms, ViewEmbeddings, code_loss
from codescan.train.optim import Amp, Schedule, autocast, set_lr
from codescan.train.pool import ImagePool
from codescan.train.sampling import step_members, view_rng

from codescan.model.preprocess import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class StepEvent:
    epoch: int  # 1-based
    step: int  # global, 1-based: updates done so far
    loss: float
    loss_real: float
    loss_fake: float
    lr: float
    img_s: float  # training images per second (each gives `views` views)
    total_steps: int  # of the whole run, for progress bars

    def record(self) -> dict[str, Any]:
        """The metrics-log line."""
        return {k: v for k, v in asdict(self).items() if k != "total_steps"}


@dataclass(frozen=True)
class EpochEvent:
    epoch: int  # 1-based, just finished
    epochs: int
    loss: float  # mean over the epoch's steps
    img_s: float
    checkpoint: Path


Event = StepEvent | EpochEvent


def view_kinds(views: int) -> tuple[ViewKind, ...]:
    return ("clean", "augmented", "global", "local") if views == 4 else ("clean", "global", "local")


def step_views(pool: ImagePool, config: TrainConfig, epoch: int, step: int, threads: int = 1) -> np.ndarray:
    """(2 · V · B, 224, 224, 3) uint8, ordered [class][view kind][image]: reals first, then fakes.

    Each image slot has its own RNG, so cutting the views on several threads (Pillow releases
    the GIL; the model is idle meanwhile) gives the same bytes as one thread.
    """
    real, fake = step_members(pool.labels, config.per_class, config.seed, epoch, step)
    kinds = view_kinds(config.views)

    def views_of(slot: int, index: int) -> list[np.ndarray]:
        rng = view_rng(config.seed, epoch, step, slot)
        return [make_view(pool.regions[index], kind, rng, config.augment) for kind in kinds]

    slots = [(slot, int(index)) for slot, index in enumerate(np.concatenate([real, fake]))]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        out = list(ex.map(lambda job: views_of(*job), slots))
    per_image = np.asarray(out, dtype=np.uint8)  # (2B, V, 224, 224, 3)
    b = config.per_class
    by_class = per_image.reshape(2, b, len(kinds), *per_image.shape[2:]).transpose(0, 2, 1, 3, 4, 5)  # (2, V, B, ...)
    return np.ascontiguousarray(by_class.reshape(-1, *per_image.shape[2:]))


class Normalize:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) with ImageNet mean/std, the ops the torch engine runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, views: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(views).to(self.device)  # (N, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)  # (N, 3, H, W)
        return x.sub(self.mean).div(self.std)


def split_embeddings(emb: torch.Tensor, views: int, per_class: int) -> ViewEmbeddings:
    """(2 · V · B, D) in step_views' order -> the eight (B, D) groups; with 3 views global doubles as augmented."""
    real, fake = emb.float().reshape(2, views, per_class, -1)  # each (V, B, D)
    kinds = view_kinds(views)
    at = {kind: kinds.index(kind) for kind in kinds}
    at["augmented"] = at.get("augmented", at["global"])
    return ViewEmbeddings(
        clean_real=real[at["clean"]],
        augmented_real=real[at["augmented"]],
        global_real=real[at["global"]],
        local_real=real[at["local"]],
        clean_fake=fake[at["clean"]],
        augmented_fake=fake[at["augmented"]],
        global_fake=fake[at["global"]],
        local_fake=fake[at["local"]],
    )


def step_loss(
    model: torch.nn.Module, normalize: Normalize, views: np.ndarray, config: TrainConfig, amp: Amp
) -> LossTerms:
    """Forward all views in one batch (autocast on CUDA only); the loss itself in float32."""
    with autocast(normalize.device, amp):
        emb = model.forward_features(normalize(views))[:, 0]  # (2 · V · B, D) CLS after the final norm
    return code_loss(split_embeddings(emb, config.views, config.per_class), config.temperature)


@dataclass
class Trainer:
    config: TrainConfig
    pool: ImagePool
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: Amp
    steps_per_epoch: int
    folder: Path
    run_info: dict[str, Any]  # stored with the checkpoint: what the config resolved to
    threads: int = 1  # for cutting views

    @property
    def schedule(self) -> Schedule:
        return Schedule.make(self.config.lr, self.config.epochs * self.steps_per_epoch, self.config.warmup)

    def run(self, start: checkpoint.Progress, on_event: Callable[[Event], None]) -> None:
        """Train from `start` to the last epoch, checkpointing and reporting after each epoch."""
        device = next(self.model.parameters()).device
        normalize = Normalize(device)
        schedule = self.schedule
        step = start.steps_done
        self.model.train()
        for epoch in range(start.epochs_done, self.config.epochs):
            losses: list[float] = []
            started = time.perf_counter()
            for s in range(self.steps_per_epoch):
                tick = time.perf_counter()
                lr = schedule.lr(step)
                terms = self.update(normalize, step_views(self.pool, self.config, epoch, s, self.threads), lr)
                step += 1
                event = StepEvent(
                    epoch=epoch + 1,
                    step=step,
                    loss=float(terms.total),
                    loss_real=float(terms.real),
                    loss_fake=float(terms.fake),
                    lr=lr,
                    img_s=self.config.batch_size / (time.perf_counter() - tick),
                    total_steps=schedule.total_steps,
                )
                losses.append(event.loss)
                checkpoint.append_metrics(self.folder, event.record())
                on_event(event)
            progress = checkpoint.Progress(epochs_done=epoch + 1, steps_done=step)
            path = checkpoint.save(self.folder, progress, self._stored(), self.model, self.optimizer, self.scaler)
            rate = self.config.batch_size * self.steps_per_epoch / (time.perf_counter() - started)
            on_event(EpochEvent(epoch + 1, self.config.epochs, float(np.mean(losses)), rate, path))
        self.model.eval()

    def update(self, normalize: Normalize, views: np.ndarray, lr: float) -> LossTerms:
        """One AdamW step on real + fake (clipped; loss-scaled under fp16); the terms, detached, for the log."""
        set_lr(self.optimizer, lr)
        terms = step_loss(self.model, normalize, views, self.config, self.amp)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return LossTerms(real=terms.real.detach(), fake=terms.fake.detach())

    def _stored(self) -> dict[str, Any]:
        return {"train": self.config.to_dict(), "run": self.run_info}
