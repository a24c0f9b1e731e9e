"""Which images a step trains on, and the RNG for their views: pure functions of (seed, epoch, step).

Nothing here carries state from one step to the next, so a run resumed at an epoch boundary
draws exactly what an uninterrupted run draws there. Each step takes ``per_class`` real and
``per_class`` fake images; each class walks through its own shuffled order (reshuffled when
it runs out), so a minority class is repeated within an epoch rather than starving batches.
"""

from __future__ import annotations

import numpy as np

REAL, FAKE = 0, 1
_ORDER, _VIEWS = 1, 2  # keep the two streams apart: equal numbers must not give equal draws


def class_order(members: np.ndarray, count: int, seed: int, epoch: int, label: int) -> np.ndarray:
    """The first `count` entries of this epoch's stream for one class: back-to-back permutations."""
    rounds = -(-count // len(members))
    perms = [np.random.default_rng([seed, _ORDER, epoch, label, r]).permutation(members) for r in range(rounds)]
    return np.concatenate(perms)[:count]


def step_members(
    labels: np.ndarray, per_class: int, seed: int, epoch: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """(real indices, fake indices), each (per_class,), into the pool for `step` of `epoch`."""
    out = []
    for label in (REAL, FAKE):
        members = np.flatnonzero(labels == label)
        end = (step + 1) * per_class
        out.append(class_order(members, end, seed, epoch, label)[end - per_class : end])
    return out[0], out[1]


def view_rng(seed: int, epoch: int, step: int, slot: int) -> np.random.Generator:
    """The generator for the views of one image slot in one step."""
    return np.random.default_rng([seed, _VIEWS, epoch, step, slot])
