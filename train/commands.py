"""The one door from the command line into training: every name the CLI's eval, calibrate and
train commands use, each looked up in its module on first use.

Lazy per name, so `codescan eval` never imports torch through the training loop and a scan never
imports training at all; and one module, so the layer test can hold the CLI to it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BIAS_NOTE": "calibrate",
    "CalibrationError": "calibrate",
    "check_target": "calibrate",
    "operating_point": "calibrate",
    "load_samples": "data",
    "print_uncut": "eval_console",
    "progress_bar": "eval_console",
    "render": "eval_console",
    "EvalConfig": "evaluate",
    "build_report": "evaluate",
    "score_samples": "evaluate",
    "MISSING": "roc_plot",
    "available": "roc_plot",
    "plot_roc": "roc_plot",
    "TrainConsole": "console",
    "requested_config": "run",
    "train_bundle": "run",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'codescan.train.commands' has no attribute {name!r}")
    return getattr(importlib.import_module(f"codescan.train.{_WHERE[name]}"), name)
