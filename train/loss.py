"""CoDE's contrastive objective: InfoNCE on cosine similarity, a real term and a fake term.

Real term, the mean of two InfoNCE losses:
- clean real (query) vs the augmented view of *another* real (positive), every augmented fake
  as negatives: all real images should embed alike, whatever was done to them;
- local view of a real vs the global view of the same real, every global fake as negatives.
The fake term is the same with the classes swapped. The total is real + fake, each once: the
reference adds the real term twice and never the fake term (engine.py), which we do not copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewEmbeddings:
    """One step's embeddings, each (B, D); row i of the four views of a class is the same image."""

    clean_real: torch.Tensor
    augmented_real: torch.Tensor
    global_real: torch.Tensor
    local_real: torch.Tensor
    clean_fake: torch.Tensor
    augmented_fake: torch.Tensor
    global_fake: torch.Tensor
    local_fake: torch.Tensor


@dataclass(frozen=True)
class LossTerms:
    real: torch.Tensor  # () scalar
    fake: torch.Tensor  # () scalar

    @property
    def total(self) -> torch.Tensor:
        return self.real + self.fake


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, D), (B, D), (M, D) -> () mean over queries; the positive is class 0 of a (1 + M)-way softmax."""
    q = F.normalize(query.float(), dim=-1)
    pos = (q * F.normalize(positive.float(), dim=-1)).sum(dim=-1, keepdim=True)  # (B, 1)
    neg = q @ F.normalize(negatives.float(), dim=-1).T  # (B, M)
    logits = torch.cat([pos, neg], dim=1) / temperature  # (B, 1 + M)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def other_image(x: torch.Tensor) -> torch.Tensor:
    """Row i gets row i+1's embedding (cyclically): a positive from a different image of the class.

    The loop's batch order is already random, so a fixed shift pairs images at random; with a
    single image per class it pairs the image with its own augmented view.
    """
    return torch.roll(x, shifts=-1, dims=0)


def class_term(
    clean: torch.Tensor,
    augmented: torch.Tensor,
    global_: torch.Tensor,
    local: torch.Tensor,
    other_augmented: torch.Tensor,
    other_global: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    across = info_nce(clean, other_image(augmented), other_augmented, temperature)
    within = info_nce(local, global_, other_global, temperature)
    return (across + within) / 2


def code_loss(e: ViewEmbeddings, temperature: float = 0.1) -> LossTerms:
    real = class_term(
        e.clean_real, e.augmented_real, e.global_real, e.local_real, e.augmented_fake, e.global_fake, temperature
    )
    fake = class_term(
        e.clean_fake, e.augmented_fake, e.global_fake, e.local_fake, e.augmented_real, e.global_real, temperature
    )
    return LossTerms(real=real, fake=fake)
