"""What `codescan train` shows on stderr while it runs.

On a terminal: a live bar (step, loss, lr, img/s, time left) with one line per stage and per
finished epoch printed above it. Elsewhere (a log file, CI): only those lines, so logs stay
readable. With --quiet: nothing. Data never goes here; the summary JSON goes to stdout.
"""

from __future__ import annotations

from codescan.train.checkpoint import CHECKPOINT, work_dir
from codescan.train.loop import EpochEvent, StepEvent
from codescan.train.run import AnyEvent, PhaseEvent, TrainResult
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from codescan.core.textsafe import printable


class TrainConsole:
    """Turns training events into stderr output."""

    def __init__(self, quiet: bool) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} (real {task.fields[loss_real]:.3f}, fake {task.fields[loss_fake]:.3f})"),
            TextColumn("lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[img_s]:.1f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.live,
        )
        self.task: int | None = None

    def __enter__(self) -> TrainConsole:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(printable(text), markup=False)  # file names from the data set are quoted here

    def __call__(self, event: AnyEvent) -> None:
        if isinstance(event, PhaseEvent):
            self.say(event.text)
        elif isinstance(event, StepEvent):
            fields = {k: getattr(event, k) for k in ("epoch", "loss", "loss_real", "loss_fake", "lr", "img_s")}
            if self.task is None:
                self.task = self.progress.add_task("training", total=event.total_steps, completed=event.step - 1, **fields)
            self.progress.update(self.task, completed=event.step, **fields)
        elif isinstance(event, EpochEvent):
            self.say(
                f"epoch {event.epoch}/{event.epochs}: mean loss {event.loss:.4f}, {event.img_s:.1f} img/s, "
                f"checkpoint {event.checkpoint}"
            )

    def finished(self, result: TrainResult) -> None:
        accuracy = ", ".join(
            f"{name} {v.balanced_accuracy:.3f}" if v.balanced_accuracy is not None else f"{name} n/a"
            for name, v in result.validation.items()
        )
        self.say(f"installed {result.bundle.name} at {result.bundle.path}; validation balanced accuracy: {accuracy}")

    def interrupted(self, out: str) -> None:
        folder = work_dir(out)
        if (folder / CHECKPOINT).is_file():
            self.say(f"interrupted: `codescan train --resume --out {out}` continues from the last checkpoint in {folder}")
        else:
            self.say("interrupted before the first checkpoint: nothing to resume")
