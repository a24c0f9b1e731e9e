"""Weight bundles: pull from the hub, import an official folder, verify, list, load.

A bundle is a folder ``<store>/weights/<name>/`` holding ``encoder.safetensors`` (timm key
names), ``heads.safetensors`` and ``bundle.json`` (encoder config, thresholds, preprocessing
version, source repo + resolved commit, licence, sha256 of every file). It is written into a
temporary sibling and renamed into place, so a crash never leaves half a bundle, and every
load re-hashes the files against ``bundle.json`` before a single weight is used.

A *variant* (written by `codescan calibrate`) is a folder holding only ``bundle.json``: its
thresholds, the name of its parent bundle and the parent's digest when the thresholds were
chosen. Loading it loads the parent's files (verified as ever) under the variant's thresholds,
and refuses once the parent's digest differs: thresholds chosen on one encoder's scores mean
nothing on another's. Copying the encoder would have cost hundreds of MB per operating point.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .fsutil import atomic_write_bytes
from .heads import Head, HeadSet, finite, load_heads, save_heads
from .model import EncoderConfig, hf_to_timm
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, PREPROCESS_VERSION
from .records import HEAD_NAMES, HeadName

BUNDLE_FORMAT = 1
OFFICIAL_REPO = "aimagelab/CoDE"
OFFICIAL_LICENSE = "MIT"
DEFAULT_NAME = "code"
DEFAULT_REVISION = "main"
OFFICIAL_PATTERNS = ["config.json", "model.safetensors", "preprocessor_config.json", "sklearn/*.sav", "sklearn/*.joblib"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
MANUAL_DOWNLOAD = (
    f"Download the weights where the hub is reachable: `hf download {OFFICIAL_REPO} --local-dir CoDE`, "
    "then `codescan weights import CoDE`"
)


class WeightsError(Exception):
    """A bundle problem the user can act on; the message says how."""


def store_root() -> Path:
    env = os.environ.get("CODESCAN_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("codescan"))


def ensure_store() -> Path:
    """Create the store private to the user (0700, whatever the umask): the scan cache in it is
    refused when others could write its folder, and so would the default cache be under umask 002."""
    root = store_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def weights_dir() -> Path:
    return store_root() / "weights"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_file() -> Path:
    return store_root() / "default-weights"  # beside weights/, so no bundle name can collide with it


def stored_default() -> str | None:
    """The name `codescan weights default NAME` stored, if any (an unreadable file counts as none)."""
    try:
        name = _default_file().read_text().strip()
    except OSError:
        return None
    return name if _NAME_RE.match(name) else None


def chosen_name(name: str | None) -> str:
    """The bundle a command uses: --weights > CODESCAN_WEIGHTS > `codescan weights default` > code."""
    return name or os.environ.get("CODESCAN_WEIGHTS") or stored_default() or DEFAULT_NAME


def set_default(name: str | None) -> None:
    """Store `name` (an installed bundle) as the default; None forgets the stored one."""
    if name is None:
        _default_file().unlink(missing_ok=True)
        return
    load_bundle(name, verify=False)  # exists and reads: a default that cannot load helps nobody
    ensure_store()
    atomic_write_bytes(_default_file(), f"{name}\n".encode())


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise WeightsError(f"invalid bundle name {name!r}: use letters, digits, '.', '_' or '-'")
    return name


@dataclass(frozen=True)
class Bundle:
    """An installed bundle. For a variant, ``path`` is the parent's folder (where the files and the
    engines built from them are) and ``meta`` the parent's with the variant's heads and ``variant``."""

    name: str
    path: Path
    meta: dict[str, Any]
    parent: str | None = None  # a variant's parent bundle

    @property
    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig.from_dict(self.meta["encoder"])

    @property
    def digest(self) -> str:
        """One sha256 naming the exact encoder + heads, for headers and engine cache keys."""
        files = self.meta["files"]
        return hashlib.sha256("".join(f"{k}:{files[k]}\n" for k in sorted(files)).encode()).hexdigest()

    @property
    def revision(self) -> str | None:
        """The hub commit a pull resolved; None for imported and trained bundles (no commit is known)."""
        return self.meta.get("source", {}).get("revision") or None

    def encoder_state(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        return load_file(str(self.path / "encoder.safetensors"))

    def head_set(self) -> HeadSet:
        try:
            heads = load_heads(self.path / "heads.safetensors")
        except ValueError as exc:  # a NaN or infinite head parameter, an unknown head
            raise WeightsError(f"bundle {self.name!r}: {exc}; re-import or re-pull it") from None
        thresholds = {n: finite(v["threshold"], f"the {n} threshold") for n, v in self.meta.get("heads", {}).items() if n in heads}
        return HeadSet(heads=heads, thresholds=thresholds)  # type: ignore[arg-type]

    def verify(self) -> None:
        for fname, expected in self.meta["files"].items():
            path = self.path / fname
            if not path.is_file():
                raise WeightsError(f"bundle {self.name!r} is missing {fname}; re-run `codescan weights import` or `pull`")
            actual = sha256_file(path)
            if actual != expected:
                raise WeightsError(
                    f"bundle {self.name!r}: {fname} has sha256 {actual[:16]}…, bundle.json says {expected[:16]}…; "
                    "the file is corrupted or was changed. Re-import or re-pull it."
                )


def load_bundle(name: str, verify: bool = True) -> Bundle:
    path = weights_dir() / check_name(name)
    meta_path = path / "bundle.json"
    if not meta_path.is_file():
        others = [b.name for b in list_bundles()]
        if others:
            raise WeightsError(
                f"no weights bundle {name!r} in {weights_dir()}; installed: {', '.join(others)}. "
                f"Scan with --weights {others[0]}, make it the default with `codescan weights default {others[0]}`, "
                f"or install {name!r} with `codescan weights pull --name {name}`"
            )
        raise WeightsError(
            f"no weights bundle {name!r} in {weights_dir()} (none installed). "
            "Run `codescan weights pull`, or `codescan weights import DIR` with a downloaded aimagelab/CoDE folder."
        )
    try:
        meta = json.loads(meta_path.read_text(), parse_constant=_not_json, parse_float=_finite_float)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"bundle {name!r}: unreadable bundle.json ({exc})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"bundle {name!r}: unreadable bundle.json (not an object)")
    if meta.get("format") != BUNDLE_FORMAT:
        raise WeightsError(f"bundle {name!r}: format {meta.get('format')!r} is not {BUNDLE_FORMAT}; re-import it")
    _check_thresholds(name, meta)
    if "variant" in meta:
        return _resolve_variant(name, meta, verify)
    bundle = Bundle(name=name, path=path, meta=meta)
    if verify:
        bundle.verify()
    return bundle


def _not_json(token: str) -> float:
    """json.loads takes NaN, Infinity and -Infinity, which are not JSON: a bundle.json holding one is refused."""
    raise ValueError(f"{token} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one past float64's range (1e999 reads as inf) is refused, wherever it is."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _check_thresholds(name: str, meta: dict[str, Any]) -> None:
    """Every head's threshold in bundle.json is a finite number ("nan", 1e999, true are not)."""
    heads = meta.get("heads", {})
    if not isinstance(heads, dict):
        raise WeightsError(f"bundle {name!r}: bundle.json's heads is not an object; re-import it")
    for head in HEAD_NAMES:
        if head not in heads:
            continue
        entry = heads[head]
        if not isinstance(entry, dict) or "threshold" not in entry:
            raise WeightsError(f"bundle {name!r}: bundle.json gives the {head} head no threshold; re-import it")
        try:
            finite(entry["threshold"], f"the {head} threshold")
        except ValueError as exc:
            raise WeightsError(f"bundle {name!r}: bundle.json: {exc}; re-import it or re-run calibrate") from None


def _resolve_variant(name: str, meta: dict[str, Any], verify: bool) -> Bundle:
    """The parent's files under the variant's thresholds, once the parent's digest is the one pinned."""
    pinned = meta["variant"]
    parent_name = str(pinned.get("parent"))
    try:
        parent = load_bundle(parent_name, verify=False)
    except WeightsError as exc:
        raise WeightsError(f"bundle {name!r} is a calibrated variant of {parent_name!r}, which cannot be loaded: {exc}") from None
    if parent.parent is not None:
        raise WeightsError(f"bundle {name!r}: its parent {parent_name!r} is itself a variant; re-run calibrate")
    if parent.digest != pinned.get("parent_digest"):
        raise WeightsError(
            f"bundle {name!r}: its parent {parent_name!r} now has digest {parent.digest[:16]}…, not the "
            f"{str(pinned.get('parent_digest'))[:16]}… its thresholds were chosen on: parent changed: re-run calibrate"
        )
    if verify:
        parent.verify()
    merged = {**parent.meta, "name": name, "heads": meta.get("heads", {}), "variant": pinned}
    return Bundle(name=name, path=parent.path, meta=merged, parent=parent_name)


NATURAL_RULE = "the head's natural decision boundary, 0 (scikit-learn's predict)"


def threshold_origins(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """Each head's threshold and where it came from: ``origin.kind`` imported, trained or calibrated.

    A variant stores every head's origin (those it did not calibrate keep the parent's); other
    bundles derive it from how they were made, which bundle.json already records.
    """
    source = bundle.meta.get("source", {})
    if source.get("type") == "trained":
        training = bundle.meta.get("training", {})
        made: dict[str, Any] = {
            "kind": "trained", "rule": training.get("threshold_rule"), "date": training.get("finished"), "data": source.get("data"),
        }
    else:
        made = {"kind": "imported", "rule": NATURAL_RULE, "repo": source.get("repo"), "revision": source.get("revision")}
    heads = bundle.meta.get("heads", {})
    return {
        head: {"threshold": float(heads[head]["threshold"]), "origin": heads[head].get("origin", made)}
        for head in HEAD_NAMES
        if head in heads
    }


def install_variant(name: str, base: Bundle, heads: dict[str, dict[str, Any]]) -> Bundle:
    """Install ``heads`` ({head: {"threshold", "origin"}}) over ``base``'s files as bundle ``name``.

    The heads not named keep ``base``'s thresholds and origins. A variant of a variant pins the
    root bundle (so a variant never depends on another variant). Only an earlier variant may be
    replaced: a bundle holding weights never is.
    """
    check_variant_name(name, base)
    for head, entry in heads.items():
        try:
            finite(entry["threshold"], f"the {head} threshold")
        except ValueError as exc:
            raise WeightsError(f"variant {name!r} not installed: {exc}") from None
    root_name = base.parent or base.name
    entries = {h: {"threshold": o["threshold"], "origin": o["origin"]} for h, o in threshold_origins(base).items()}
    entries.update(heads)
    meta = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "codescan": __version__,
        "variant": {
            "parent": root_name,
            "parent_digest": base.digest,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "heads": entries,
    }
    return _install(name, lambda tmp: (tmp / "bundle.json").write_text(_json_text(meta)))


def check_variant_name(name: str, base: Bundle) -> str:
    """A name a variant of ``base`` may take: valid, not its parent, not a bundle that holds weights."""
    check_name(name)
    if name == (base.parent or base.name):
        raise WeightsError(f"--out {name!r} is the parent bundle itself: choose another name")
    existing = weights_dir() / name / "bundle.json"
    if existing.is_file() and not _is_variant(existing):
        raise WeightsError(f"bundle {name!r} exists and holds weights, not calibrated thresholds: choose another --out")
    return name


def _is_variant(meta_path: Path) -> bool:
    try:
        return "variant" in json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False


def list_bundles() -> list[Bundle]:
    root = weights_dir()
    if not root.is_dir():
        return []
    out = []
    for child in sorted(root.iterdir()):
        if (child / "bundle.json").is_file():
            try:
                out.append(load_bundle(child.name, verify=False))
            except WeightsError:
                continue
    return out


def _load_official_heads(src: Path) -> dict[HeadName, Head]:
    from .headconvert import HeadConversionError, convert_isolated

    files = sorted([*src.glob("sklearn/*.sav"), *src.glob("sklearn/*.joblib")])
    if not files:
        raise WeightsError(f"{src}: no heads found under sklearn/ (*.sav, *.joblib)")
    try:
        return convert_isolated(files)
    except HeadConversionError as exc:
        if exc.kind == "unsafe":
            raise WeightsError(f"{src}: unsafe head pickle refused, nothing was executed: {exc}") from None
        raise WeightsError(f"{src}: cannot read the scikit-learn heads: {exc}") from None


def bundle_meta(
    name: str,
    config: EncoderConfig,
    thresholds: dict[HeadName, float],
    source: dict[str, Any],
    license: str,
) -> dict[str, Any]:
    """bundle.json's fields (without the file hashes), shared by imported and trained bundles."""
    return {
        "format": BUNDLE_FORMAT,
        "name": name,
        "codescan": __version__,
        "encoder": config.to_dict(),
        "embedding": "cls_after_final_norm",
        "preprocess": {
            "version": PREPROCESS_VERSION,
            "crop": config.img_size,
            "resize": False,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "heads": {n: {"threshold": finite(thresholds[n], f"the {n} threshold")} for n in HEAD_NAMES if n in thresholds},
        "license": license,
        "source": source,
    }


def write_bundle(name: str, encoder: dict[str, np.ndarray], heads: dict[HeadName, Head], meta: dict[str, Any]) -> Bundle:
    """Write into a temp dir beside the target, then swap it in with renames."""
    from safetensors.numpy import save_file

    def fill(tmp: Path) -> None:
        save_file(encoder, str(tmp / "encoder.safetensors"))
        save_heads(heads, tmp / "heads.safetensors")
        meta["files"] = {f: sha256_file(tmp / f) for f in ("encoder.safetensors", "heads.safetensors")}
        (tmp / "bundle.json").write_text(_json_text(meta))

    return _install(name, fill)


def _json_text(meta: dict[str, Any]) -> str:
    """bundle.json's text: strict JSON (a NaN or infinity raises ValueError, never written as a bare token)."""
    return json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _install(name: str, fill: Callable[[Path], object]) -> Bundle:
    """Fill a temp folder beside the bundle's place, then swap it in: a bundle is whole or absent."""
    tmp = _new_folder(name)
    try:
        fill(tmp)
        _swap_in(tmp, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(name)


def _new_folder(name: str) -> Path:
    """A temp folder beside the bundle's final place, so that the swap is a rename on one file system."""
    ensure_store()
    root = weights_dir()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))


def _swap_in(tmp: Path, name: str) -> None:
    """Rename ``tmp`` into place as bundle ``name``; a crash leaves the old bundle or the new one, never half."""
    root = weights_dir()
    final = root / name
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=root))
        os.rename(final, old / name)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _refuse_lfs_pointers(src: Path) -> None:
    """A `git clone` without git-lfs leaves 130-byte pointer files where the weights should be."""
    for pattern in OFFICIAL_PATTERNS:
        for path in sorted(src.glob(pattern)):
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
    for required in ("config.json", "model.safetensors"):
        if not (src / required).is_file():
            raise WeightsError(f"{src} is not an aimagelab/CoDE folder: {required} is missing")
    _refuse_lfs_pointers(src)
    try:
        config = EncoderConfig.from_hf_config(json.loads((src / "config.json").read_text()))
        encoder = hf_to_timm(load_file(str(src / "model.safetensors")), config)
    except (KeyError, ValueError, OSError, SafetensorError) as exc:
        raise WeightsError(f"{src}: cannot convert the encoder: {' '.join(str(exc).split())}") from None
    heads = _load_official_heads(src)

    if source is None:
        source = {
            "repo": OFFICIAL_REPO,
            "revision": None,
            "imported_from": str(src.resolve()),
            "files": _hash_official(src),
        }
    license = OFFICIAL_LICENSE if source.get("repo") == OFFICIAL_REPO else source.get("license", "unknown")
    meta = bundle_meta(name, config, {n: 0.0 for n in heads}, source, license)
    return write_bundle(name, encoder, heads, meta)


def _hash_official(src: Path) -> dict[str, str]:
    files = [p for pattern in OFFICIAL_PATTERNS for p in sorted(src.glob(pattern)) if p.is_file()]
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
        previous = load_bundle(name, verify=False)
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
    files = _hash_official(folder)
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
