"""Installing the official weights: import of a downloaded aimagelab/CoDE folder, and the pinned hub pull."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

from codescan.core.records import HeadName
from codescan.model.encoder import EncoderConfig, hf_to_timm
from codescan.model.heads import Head
from codescan.weights.bundle import (
    Bundle,
    bundle_meta,
    list_bundles,
    load_bundle,
    write_bundle,
)
from codescan.weights.store import (
    DEFAULT_NAME,
    WeightsError,
    check_name,
    sha256_file,
    weights_dir,
)

OFFICIAL_REPO = "aimagelab/CoDE"


OFFICIAL_LICENSE = "MIT"


DEFAULT_REVISION = "main"


OFFICIAL_PATTERNS = ["config.json", "model.safetensors", "preprocessor_config.json", "sklearn/*.sav", "sklearn/*.joblib"]


_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


MANUAL_DOWNLOAD = (
    f"Download the weights where the hub is reachable: `hf download {OFFICIAL_REPO} --local-dir CoDE`, "
    "then `codescan weights import CoDE`"
)


def _official_files(src: Path) -> list[Path]:
    """The folder's files that codescan reads, each a regular file once links are followed (`hf
    download` may link into its cache): opening a FIFO left there would wait for a writer forever,
    and a device has no end. Anything else under those names is refused, never skipped."""
    files = [p for pattern in OFFICIAL_PATTERNS for p in sorted(src.glob(pattern))]
    for path in files:
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
        except OSError as exc:
            raise WeightsError(f"{path}: cannot read it ({exc.strerror})") from None
        if not regular:
            raise WeightsError(f"{path} is not a regular file (a folder, FIFO, socket or device); remove it or download again")
    return files


def _load_official_heads(files: list[Path], src: Path) -> dict[HeadName, Head]:
    from codescan.weights.headconvert import HeadConversionError, convert_isolated

    files = sorted(p for p in files if p.parent == src / "sklearn")
    if not files:
        raise WeightsError(f"{src}: no heads found under sklearn/ (*.sav, *.joblib)")
    try:
        return convert_isolated(files)
    except HeadConversionError as exc:
        if exc.kind == "unsafe":
            raise WeightsError(f"{src}: unsafe head pickle refused, nothing was executed: {exc}") from None
        raise WeightsError(f"{src}: cannot read the scikit-learn heads: {exc}") from None


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _refuse_lfs_pointers(files: list[Path], src: Path) -> None:
    """A `git clone` without git-lfs leaves 130-byte pointer files where the weights should be."""
    for path in files:
        with open(path, "rb") as fh:
            if fh.read(len(_LFS_POINTER)) == _LFS_POINTER:
                raise WeightsError(
                    f"{path} is a Git LFS pointer, not the file itself (the folder was cloned without git-lfs): "
                    f"run `git lfs pull` in {src}, or download with `hf download {OFFICIAL_REPO} --local-dir CoDE`"
                )


def import_official(src: Path, name: str = DEFAULT_NAME, source: dict[str, Any] | None = None) -> Bundle:
    """Convert a folder in the aimagelab/CoDE layout into a bundle (once; scans never unpickle)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    check_name(name)
    src = Path(src)
    files = _official_files(src)
    for required in ("config.json", "model.safetensors"):
        if src / required not in files:
            raise WeightsError(f"{src} is not an aimagelab/CoDE folder: {required} is missing")
    _refuse_lfs_pointers(files, src)
    try:
        config = EncoderConfig.from_hf_config(json.loads((src / "config.json").read_text()))
        encoder = hf_to_timm(load_file(str(src / "model.safetensors")), config)
    except (KeyError, ValueError, OSError, SafetensorError) as exc:
        raise WeightsError(f"{src}: cannot convert the encoder: {' '.join(str(exc).split())}") from None
    heads = _load_official_heads(files, src)

    if source is None:
        source = {
            "repo": OFFICIAL_REPO,
            "revision": None,
            "imported_from": str(src.resolve()),
            "files": _hash_official(files, src),
        }
    license = OFFICIAL_LICENSE if source.get("repo") == OFFICIAL_REPO else source.get("license", "unknown")
    meta = bundle_meta(name, config, {n: 0.0 for n in heads}, source, license)
    return write_bundle(name, encoder, heads, meta)


def _hash_official(files: list[Path], src: Path) -> dict[str, str]:
    return {p.relative_to(src).as_posix(): sha256_file(p) for p in files}


Downloader = Callable[..., str]


def _hub_download(repo_id: str, revision: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=OFFICIAL_PATTERNS)


def pull(
    name: str = DEFAULT_NAME,
    repo: str = OFFICIAL_REPO,
    revision: str | None = None,
    download: Downloader = _hub_download,
) -> Bundle:
    """Download and import; pin to the commit and file hashes recorded by the first pull.

    Without ``revision`` a repeat pull asks the hub for the recorded commit and refuses files
    whose sha256 differs from what was recorded, so a re-uploaded or tampered file never
    replaces the weights silently. ``revision`` re-pins on purpose.
    """
    check_name(name)
    previous: Bundle | None = None
    try:
        previous = load_bundle(name)
    except WeightsError:
        pass
    pinned = previous.meta.get("source", {}) if previous else {}
    if pinned.get("repo") != repo or not pinned.get("revision"):
        pinned = {}
    want = revision or pinned.get("revision") or DEFAULT_REVISION
    try:
        folder = Path(download(repo, want))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many network error types
        kind = type(exc).__name__
        if "RepositoryNotFound" in kind or "RevisionNotFound" in kind:
            raise WeightsError(f"{repo}@{want}: not found on the hub ({kind})") from None
        raise WeightsError(f"hub unreachable ({kind}). {MANUAL_DOWNLOAD}") from None
    commit = folder.name if _COMMIT_RE.match(folder.name) else want
    files = _hash_official(_official_files(folder), folder)
    if pinned and not revision:
        changed = sorted(f for f, h in pinned.get("files", {}).items() if files.get(f) != h)
        if changed or commit != pinned["revision"]:
            raise WeightsError(
                f"{repo}: the hub served files that differ from the pinned commit {pinned['revision'][:12]} "
                f"({', '.join(changed) or 'commit ' + commit[:12]}); refusing them. "
                "Use `--revision` to re-pin deliberately."
            )
    source = {"repo": repo, "revision": commit, "requested": want, "files": files}
    return import_official(folder, name=name, source=source)


def downloads_off() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE") or os.environ.get("CODESCAN_OFFLINE", "") == "1"


def ensure_default(name: str, announce: Callable[[str], None], download: Downloader = _hub_download) -> None:
    """Pull the default bundle at first use, as timm's ``pretrained=True`` does; trust on first use.

    Only the default name is fetched by itself, and only into an empty store (another name
    missing is the user's typo, and with other bundles installed the user has weights of their
    own: `load_bundle` names them, with --weights and `codescan weights default`). The commit the hub resolved and every file's sha256 are
    recorded like `weights pull` records them, and printed, since no known-good commit can be
    built into codescan.
    """
    if name != DEFAULT_NAME or (weights_dir() / name / "bundle.json").is_file():
        return
    if list_bundles():  # others are installed: the user meant one of them (load_bundle names them)
        return
    if downloads_off():
        raise WeightsError(
            f"the weights ({OFFICIAL_REPO}) are not installed and downloads are off "
            f"(HF_HUB_OFFLINE or CODESCAN_OFFLINE). {MANUAL_DOWNLOAD}"
        )
    announce(f"first use: downloading {OFFICIAL_REPO} from the Hugging Face hub into {weights_dir()}")
    bundle = pull(name, download=download)
    source = bundle.meta["source"]
    announce(f"installed {OFFICIAL_REPO} at commit {source['revision']} (trust on first use; later pulls must match):")
    for fname, digest in sorted(source["files"].items()):
        announce(f"  sha256 {digest}  {fname}")
