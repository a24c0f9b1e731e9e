"""The training work folder: one checkpoint after every epoch, and the metrics log.

``<store>/train/<out>/checkpoint.safetensors`` holds the encoder, the optimiser's per-parameter
state and torch's RNG as tensors, and the rest (epochs and steps done, the run's configuration,
optimiser hyper-parameters, loss-scaler state) as JSON in the file's metadata: one file,
replaced atomically, so a crash leaves the previous checkpoint or the new one, never a mix.
``metrics.jsonl`` gets one line per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from codescan.core.fsutil import atomic_write_bytes
from codescan.weights.store import check_name, store_root

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
FORMAT = 1
_META_KEY = "codescan_checkpoint"


def work_dir(out: str) -> Path:
    return store_root() / "train" / check_name(out)


@dataclass(frozen=True)
class Progress:
    epochs_done: int
    steps_done: int


@dataclass(frozen=True)
class Checkpoint:
    progress: Progress
    settings: dict[str, Any]  # what the run was asked to do and what that resolved to
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Put model, optimiser, loss scaler and torch's RNG back exactly as they were saved."""
        model.load_state_dict({k[len("model/") :]: v for k, v in self.tensors.items() if k.startswith("model/")})
        state: dict[int, dict[str, Any]] = {}
        for key, value in self.tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": self.meta["param_groups"]})
        if self.meta["scaler"]:
            scaler.load_state_dict(self.meta["scaler"])
        torch.set_rng_state(self.tensors["rng/torch"])
        if "rng/cuda" in self.tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(self.tensors["rng/cuda"])


def save(
    folder: Path,
    progress: Progress,
    settings: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> Path:
    from safetensors.torch import save

    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, entries in opt["state"].items():
        for name, value in entries.items():
            tensors[f"optim/{index}/{name}"] = value.detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    meta = {
        "format": FORMAT,
        "epochs_done": progress.epochs_done,
        "steps_done": progress.steps_done,
        "settings": settings,
        "param_groups": opt["param_groups"],
        "scaler": scaler.state_dict(),
    }
    path = folder / CHECKPOINT
    atomic_write_bytes(path, save(tensors, metadata={_META_KEY: json.dumps(meta, allow_nan=False)}))
    return path


def load(folder: Path) -> Checkpoint | None:
    """The folder's checkpoint (on the CPU), or None when there is none yet.

    Tensors stay on the CPU: ``load_state_dict`` copies them onto the model's device, and
    AdamW wants its step counters on the CPU unless it runs capturable.
    """
    from safetensors import safe_open

    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {})[_META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r} is not {FORMAT}")
    progress = Progress(epochs_done=int(meta["epochs_done"]), steps_done=int(meta["steps_done"]))
    return Checkpoint(progress=progress, settings=meta["settings"], tensors=tensors, meta=meta)


def append_metrics(folder: Path, record: dict[str, Any]) -> None:
    with open(folder / METRICS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, allow_nan=False) + "\n")


def trim_metrics(folder: Path, epochs_done: int) -> None:
    """Keep the log's lines for finished epochs only: a resumed run rewrites the epoch it lost."""
    path = folder / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["epoch"] <= epochs_done:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by the interruption
    atomic_write_bytes(path, "".join(kept).encode("utf-8"))
