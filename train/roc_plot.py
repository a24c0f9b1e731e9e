"""ROC curves per generator for `codescan eval --plot`, with matplotlib as an optional extra.

matplotlib is a large install that scanning never needs, so it is the `plot` extra and is
checked before any image is embedded: a missing plotting library should not cost a long
evaluation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from codescan.train.evaluate import Scored
from codescan.train.metrics import roc_auc, roc_curve

MISSING = "--plot needs matplotlib: pip install 'codescan[plot]'"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_roc(scored: Scored, path: Path) -> None:
    """One panel per head; one curve per generator (its fakes vs all reals), and all fakes when there are several.

    Drawn on a Figure with an Agg canvas, not through pyplot: no global backend switch, no GUI.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    is_fake = scored.is_fake
    names = list(scored.scores)
    fig = Figure(figsize=(5 * len(names), 5))
    FigureCanvasAgg(fig)
    curves = [(g, scored.subset(g)) for g in scored.generators()]
    if len(curves) > 1:
        curves.insert(0, ("all fakes", np.ones_like(is_fake)))
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names):
        for label, mask in curves:
            y, s = is_fake[mask], scored.scores[name][mask]
            if y.all() or not y.any():
                continue
            c = roc_curve(y, s)
            ax.plot(c.fpr, c.tpr, label=f"{label} (AUC {roc_auc(y, s):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(title=name, xlabel="false positive rate (reals judged fake)", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"{scored.run['weights']['name']} on {scored.run['data']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
