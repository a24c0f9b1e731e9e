"""Optimiser, learning-rate schedule and mixed precision for the training loop.

The learning rate is a pure function of the global step (linear warm-up, then cosine to 0),
so the schedule's whole state is the step number the checkpoint already stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Amp = Literal["off", "bf16", "fp16"]


@dataclass(frozen=True)
class Schedule:
    base_lr: float
    total_steps: int
    warmup_steps: int

    @classmethod
    def make(cls, base_lr: float, total_steps: int, warmup_fraction: float) -> Schedule:
        warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
        return cls(base_lr=base_lr, total_steps=total_steps, warmup_steps=min(warmup, total_steps))

    def lr(self, step: int) -> float:
        """The rate for the update at 0-based `step`."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * (step - self.warmup_steps) / span))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def amp_for(device: torch.device) -> Amp:
    """Autocast only on CUDA: bf16 where the GPU has it (no loss scaling needed), else fp16."""
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(device: torch.device, amp: Amp) -> torch.autocast:
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "off")


def grad_scaler(device: torch.device, amp: Amp) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only; a disabled scaler passes gradients through untouched."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
