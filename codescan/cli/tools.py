"""The commands besides `scan`: gate, compile, eval, train and `weights …`.

Each only parses its options and calls the library; `register` attaches them to the CLI app.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from codescan.cli.options import (
    EXIT_INTERRUPTED,
    BatchSizeOpt,
    Command,
    CropsOpt,
    EngineOpt,
    PrecisionOpt,
    QuietOpt,
    UsageError,
    WeightsOpt,
    err_console,
)
from codescan.core import defaults
from codescan.core.records import HeadChoice
from codescan.engines.specs import ENGINES
from codescan.output import messages


def gate(
    data: Annotated[list[str], typer.Argument(metavar="PATH", help="Folders or files of labelled-or-not images to measure on.")],
    weights: WeightsOpt = None,
) -> None:
    """Measure reduced precisions (int8, bf16; fp16 on a GPU) against fp32; `--precision auto` uses those that pass."""
    import json

    import numpy as np

    from codescan.decoding.examine import Examined
    from codescan.decoding.feed import DecodePool
    from codescan.engines.gate import (
        MIN_AGREEMENT,
        MIN_AGREEMENT_BOUND,
        MIN_COSINE,
        images_needed,
        run_gate,
    )
    from codescan.inputs.walk import walk
    from codescan.scan.plan import measuring_config
    from codescan.weights.bundle import load_bundle
    from codescan.weights.store import chosen_name

    bundle = load_bundle(chosen_name(weights))
    pool = DecodePool(workers=defaults.decode_workers(), config=measuring_config(), timeout=defaults.DECODE_TIMEOUT, window=64)
    crops = [o.decoded.crop for _, o in pool.outcomes(walk(data)) if isinstance(o, Examined) and o.decoded]
    if not crops:
        raise UsageError("no decodable images under the given paths")
    results = run_gate(bundle, np.stack(crops))
    err = err_console()
    err.print(
        f"gate: cosine ≥ {MIN_COSINE}, verdict agreement ≥ {MIN_AGREEMENT:.1%} per head and ≥ {MIN_AGREEMENT_BOUND:.0%} "
        f"shown at 95% confidence, on {len(crops)} images"
    )
    if len(crops) < images_needed(0):
        err.print(f"  {len(crops)} images cannot show that: at least {images_needed(0)} are needed if none flip; this gate passes nothing")
    for r in results:
        agree = ", ".join(f"{h} {v:.2%}" for h, v in r.agreement.items())
        err.print(f"  {r.engine}:{r.precision}: cosine min {r.cosine_min:.6f}, {agree} -> {'PASS' if r.passed else 'fail'}")
        for reason in r.reasons:
            messages.info(f"    {reason}")
    print(json.dumps([r.__dict__ for r in results], indent=2, allow_nan=False))


def compile_command(
    weights: WeightsOpt = None,
    precision: Annotated[
        str, typer.Option(metavar="|".join(ENGINES["tensorrt"].precisions), help="The ONNX graph's types (strongly typed build).")
    ] = "fp16",
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, max=4096, metavar="N", help="Largest batch the engine takes (profile: min 1, opt = max = N).")
    ] = 64,
) -> None:
    """Build the TensorRT engine for this GPU from the bundle (once; cached beside the bundle)."""
    from codescan.engines.tensorrt_build import TRT_PRECISIONS, import_tensorrt
    from codescan.engines.tensorrt_engine import compile_engine
    from codescan.weights.bundle import load_bundle
    from codescan.weights.store import chosen_name

    if precision not in TRT_PRECISIONS:
        raise UsageError(f"--precision: choose from {', '.join(TRT_PRECISIONS)}")
    import_tensorrt()  # fails first, in one line, where TensorRT is not installed
    bundle = load_bundle(chosen_name(weights))
    info = compile_engine(bundle, precision, max_batch)
    key = info.key
    err_console().print(
        f"{'built' if info.built else 'already cached'}: TensorRT {key['tensorrt']} {precision} engine for "
        f"{key['gpu']} (sm {key['compute_capability']}), batch 1..{max_batch}",
        markup=False,
    )
    print(info.path)


def eval_command(
    data: Annotated[
        Path,
        typer.Option(metavar="DIR|CSV", help="Folder with real/** and fake/<generator>/**, or a CSV manifest (path,label[,generator]).",
                     show_default=False),
    ],
    weights: WeightsOpt = None,
    head: Annotated[HeadChoice, typer.Option(help="Head to measure; all = every head in the bundle.")] = "all",
    crops: CropsOpt = defaults.CROPS,
    engine: EngineOpt = defaults.ENGINE,
    precision: PrecisionOpt = defaults.PRECISION,
    batch_size: BatchSizeOpt = None,
    plot: Annotated[
        Optional[Path], typer.Option(metavar="FILE.png", help="Also draw ROC curves per generator into this PNG (needs matplotlib: the plot extra).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Measure a bundle on labelled images, overall and per generator: tables on stderr, JSON on stdout."""
    import json

    from codescan.train.commands import (
        EvalConfig,
        build_report,
        progress_bar,
        render,
        score_samples,
    )

    if plot is not None:
        from codescan.train.commands import MISSING, available, plot_roc

        if not available():
            raise UsageError(MISSING)
        if not plot.parent.is_dir():
            raise UsageError(f"--plot: folder {plot.parent} does not exist")
    from codescan.weights.store import chosen_name

    config = EvalConfig(
        data=data, weights=chosen_name(weights), head=head, crops=crops, engine=engine, precision=precision, batch_size=batch_size
    )
    err = err_console()
    with progress_bar(err, quiet) as progress:
        task = progress.add_task("embedding", total=None)
        scored = score_samples(config, lambda done, total: progress.update(task, completed=done, total=total))
    report = build_report(scored)
    if not quiet:
        render(report, err)
    if plot is not None:
        plot_roc(scored, plot)
    print(json.dumps(report.to_dict(), indent=2, allow_nan=False))


def weights_pull(
    name: Annotated[str, typer.Option(metavar="NAME", help="Bundle name to install as.")] = "code",
    revision: Annotated[Optional[str], typer.Option(metavar="REV", help="Hub revision (branch, tag or commit); re-pins.")] = None,
    repo: Annotated[str, typer.Option(metavar="OWNER/NAME", help="Hub repository.")] = "aimagelab/CoDE",
) -> None:
    """Download aimagelab/CoDE from the Hugging Face hub and install it (pinned by commit + sha256)."""
    from codescan.weights.install import pull

    bundle = pull(name=name, repo=repo, revision=revision)
    messages.info(f"installed {bundle.name} ({repo}@{bundle.revision}) at {bundle.path}")


def weights_import(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A downloaded aimagelab/CoDE folder.", show_default=False)],
    name: Annotated[str, typer.Option(metavar="NAME", help="Bundle name to install as.")] = "code",
) -> None:
    """Convert a folder in the official layout into a bundle (heads read without executing pickles)."""
    from codescan.weights.install import import_official

    bundle = import_official(directory, name=name)
    messages.info(f"installed {bundle.name} from {directory} at {bundle.path}")


def _origin_text(origin: dict[str, Any]) -> str:
    """One origin in a few words: `calibrated fpr<=0.01 on 500 real + 80 fake (2026-01-02)`, `trained`, `imported`."""
    kind = str(origin.get("kind", "?"))
    if kind == "calibrated":
        date = str(origin.get("date", ""))[:10]
        return f"calibrated fpr<={origin.get('target_fpr')} on {origin.get('n_real')} real + {origin.get('n_fake')} fake ({date})"
    return kind


def weights_list() -> None:
    """Installed bundles: a heading line, then one tab-separated line per bundle.

    `parent` is a calibrated variant's parent (`-` otherwise); `thresholds` says, per head,
    the threshold and where it came from (imported, trained, calibrated).
    """
    from codescan.weights.bundle import list_bundles, threshold_origins
    from codescan.weights.store import weights_dir

    bundles = list_bundles()
    if not bundles:
        messages.note(f"no bundles in {weights_dir()}; run `codescan weights pull` or `codescan weights import DIR`")
        return
    print("name\tdigest\trevision\tlicense\tparent\tthresholds")
    for b in bundles:
        thresholds = "; ".join(f"{h}={o['threshold']:g} {_origin_text(o['origin'])}" for h, o in threshold_origins(b).items())
        print(f"{b.name}\t{b.digest[:16]}\t{b.revision or '-'}\t{b.meta.get('license', '?')}\t{b.parent or '-'}\t{thresholds}")


def weights_info(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="Bundle name (default: the default bundle).", show_default=False)] = None,
) -> None:
    """Everything bundle.json records, after re-verifying every file's sha256; where each threshold came from.

    JSON on stdout adds `thresholds: {head: {threshold, origin: {kind, ...}}}`; for a calibrated
    variant `path` is its own folder (bundle.json only) and `files_path` the parent's. One line
    per head on stderr says the same for a person.
    """
    import json

    from codescan.weights.bundle import load_bundle, threshold_origins
    from codescan.weights.store import chosen_name, weights_dir

    bundle = load_bundle(chosen_name(name), verify=True)
    origins = threshold_origins(bundle)
    where = {"path": str(bundle.path)}
    if bundle.parent is not None:
        where = {"path": str(weights_dir() / bundle.name), "files_path": str(bundle.path)}
    for head, o in origins.items():
        details = o["origin"]
        data = f", data {details['data']} (sha256 {str(details.get('data_sha256'))[:16]}…)" if details.get("kind") == "calibrated" else ""
        messages.info(f"{head}: threshold {o['threshold']:g}, {_origin_text(details)}{data}")
    print(json.dumps({"name": bundle.name, **where, "digest": bundle.digest, **bundle.meta, "thresholds": origins}, indent=2, allow_nan=False))


def train_command(
    data: Annotated[
        Optional[Path],
        typer.Option(
            envvar="CODESCAN_TRAIN_DATA",
            metavar="DIR|CSV",
            help="Folder with real/** and fake/<generator>/**, or a CSV manifest (path,label[,generator]). "
            "With --resume: the checkpoint's.",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        Optional[str], typer.Option(envvar="CODESCAN_TRAIN_INIT", metavar="scratch|NAME", help="scratch, or an installed bundle to start from. Default: scratch.")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(envvar="CODESCAN_TRAIN_EPOCHS", min=1, metavar="N", help="Default: 10.")] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(envvar="CODESCAN_TRAIN_BATCH_SIZE", min=4, metavar="N", help="Images per step, half real, half fake; even. Default: 32."),
    ] = None,
    steps_per_epoch: Annotated[
        Optional[int],
        typer.Option(envvar="CODESCAN_TRAIN_STEPS_PER_EPOCH", min=1, metavar="N", help="Default: training images / batch size, rounded up."),
    ] = None,
    views: Annotated[
        Optional[Literal[3, 4]],
        typer.Option(
            envvar="CODESCAN_TRAIN_VIEWS",
            help="Views per image: 4 = clean, augmented, global, local; 3 = the global view is also the augmented one "
            "(25% less compute). Default: 4.",
        ),
    ] = None,
    lr: Annotated[Optional[float], typer.Option(envvar="CODESCAN_TRAIN_LR", min=0.0, metavar="X", help="Peak AdamW learning rate. Default: 0.002.")] = None,
    seed: Annotated[Optional[int], typer.Option(envvar="CODESCAN_TRAIN_SEED", metavar="N", help="Default: 0.")] = None,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(
            envvar="CODESCAN_TRAIN_VAL_FRACTION", min=0.0, max=0.99, metavar="X", help="Held out by file hash to pick thresholds. Default: 0.1."
        ),
    ] = None,
    device: Annotated[
        Optional[Literal["auto", "cpu", "cuda"]],
        typer.Option(envvar="CODESCAN_TRAIN_DEVICE", help="auto: CUDA if usable, else CPU. Default: auto."),
    ] = None,
    out: Annotated[
        str, typer.Option(envvar="CODESCAN_TRAIN_OUT", metavar="NAME", help="Bundle to install the result as; also names the work folder.")
    ] = "trained",
    resume: Annotated[bool, typer.Option(help="Continue the run checkpointed under --out, with its settings.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a CoDE encoder and its heads on labelled images; install them as a bundle for scan."""
    import importlib.util
    import json

    missing = [m for m in ("torch", "timm", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"codescan train needs {', '.join(missing)}: pip install 'codescan[train]'")
    from codescan.train.commands import TrainConsole, requested_config, train_bundle

    options = {
        "data": str(data.resolve()) if data is not None else None, "init": init, "epochs": epochs, "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch, "views": views, "lr": lr, "seed": seed, "val_fraction": val_fraction, "device": device,
    }
    config = requested_config(out, {k: v for k, v in options.items() if v is not None}, resume)
    with TrainConsole(quiet) as console:
        try:
            result = train_bundle(config, resume=resume, on_event=console)
        except KeyboardInterrupt:
            console.interrupted(out)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    console.finished(result)
    print(json.dumps(result.summary(), indent=2, allow_nan=False))


def weights_default(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="Installed bundle to use when --weights is not given.", show_default=False)] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the stored default (back to code).")] = False,
) -> None:
    """Show or store the bundle scans use by default: --weights > CODESCAN_WEIGHTS > this > code."""
    from codescan.weights.bundle import set_default
    from codescan.weights.store import DEFAULT_NAME, chosen_name, stored_default

    if name is not None and clear:
        raise UsageError("give NAME or --clear, not both")
    if name is not None or clear:
        set_default(name)
        messages.info(f"default bundle: {name}" if name else f"default bundle: {DEFAULT_NAME} (none stored)")
        return
    stored = stored_default()
    env = os.environ.get("CODESCAN_WEIGHTS")
    source = "CODESCAN_WEIGHTS" if env else ("stored with `codescan weights default`" if stored else "built in")
    print(chosen_name(None))
    messages.info(f"({source})")


def register(app: typer.Typer, weights_app: typer.Typer) -> None:
    app.command(cls=Command)(gate)
    app.command("compile", cls=Command)(compile_command)
    app.command("eval", cls=Command)(eval_command)
    weights_app.command("pull", cls=Command)(weights_pull)
    weights_app.command("import", cls=Command)(weights_import)
    weights_app.command("list", cls=Command)(weights_list)
    weights_app.command("info", cls=Command)(weights_info)
    weights_app.command("default", cls=Command)(weights_default)
    app.command("train", cls=Command)(train_command)
