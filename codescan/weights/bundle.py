"""Weight bundles: read, verify, list and load them, write new ones, and calibrated variants.

A bundle is a folder ``<store>/weights/<name>/`` holding ``encoder.safetensors`` (timm key
names), ``heads.safetensors`` and ``bundle.json`` (encoder config, thresholds, preprocessing
version, source repo + resolved commit, licence, sha256 of every file). It is written into a
temporary sibling and renamed into place, so a crash never leaves half a bundle. Each file is
hashed against ``bundle.json`` as it is read, and the bytes hashed are the bytes parsed: no file
can change between its check and its use, and a scan that never reads the encoder's weights (its
ONNX graph or TensorRT engine is stored, verified by its own record) does not hash them.

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
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from codescan.core import strictjson
from codescan.core.fsutil import atomic_write_bytes
from codescan.core.records import HEAD_NAMES, HeadName
from codescan.core.version import __version__
from codescan.model.encoder import EncoderConfig
from codescan.model.heads import Head, HeadSet, finite, load_heads, save_heads
from codescan.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_VERSION,
)
from codescan.weights.store import (
    BUNDLE_FORMAT,
    WeightsError,
    _default_file,
    check_name,
    ensure_store,
    sha256_file,
    weights_dir,
)


def set_default(name: str | None) -> None:
    """Store `name` (an installed bundle) as the default; None forgets the stored one."""
    if name is None:
        _default_file().unlink(missing_ok=True)
        return
    load_bundle(name)  # exists and reads: a default that cannot load helps nobody
    ensure_store()
    atomic_write_bytes(_default_file(), f"{name}\n".encode())


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
        """One sha256 naming the exact encoder + heads, for headers, the scan cache's keys and derived files' keys."""
        files = self.meta["files"]
        return hashlib.sha256("".join(f"{k}:{files[k]}\n" for k in sorted(files)).encode()).hexdigest()

    @property
    def revision(self) -> str | None:
        """The hub commit a pull resolved; None for imported and trained bundles (no commit is known)."""
        return self.meta.get("source", {}).get("revision") or None

    def encoder_state(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load

        return load(self.read("encoder.safetensors"))

    def head_set(self) -> HeadSet:
        data = self.read("heads.safetensors")
        try:
            heads = load_heads(data, str(self.path / "heads.safetensors"))
        except ValueError as exc:  # a NaN or infinite head parameter, an unknown head
            raise WeightsError(f"bundle {self.name!r}: {exc}; re-import or re-pull it") from None
        thresholds = {n: finite(v["threshold"], f"the {n} threshold") for n, v in self.meta.get("heads", {}).items() if n in heads}
        return HeadSet(heads=heads, thresholds=thresholds)  # type: ignore[arg-type]

    def read(self, fname: str) -> bytes:
        """A file of the bundle, once its bytes hash to what bundle.json records."""
        try:
            data = (self.path / fname).read_bytes()
        except OSError:
            raise self._missing(fname) from None
        self._check(fname, hashlib.sha256(data).hexdigest())
        return data

    def verify(self) -> None:
        """Every file, hashed now (`weights info`): scans check only the files they read, in `read`."""
        for fname in self.meta["files"]:
            path = self.path / fname
            if not path.is_file():
                raise self._missing(fname)
            self._check(fname, sha256_file(path))

    def _missing(self, fname: str) -> WeightsError:
        return WeightsError(f"bundle {self.name!r} is missing {fname}; re-run `codescan weights import` or `pull`")

    def _check(self, fname: str, actual: str) -> None:
        expected = self.meta["files"].get(fname)
        if actual != expected:
            raise WeightsError(
                f"bundle {self.name!r}: {fname} has sha256 {actual[:16]}…, bundle.json says {str(expected)[:16]}…; "
                "the file is corrupted or was changed. Re-import or re-pull it."
            )


def load_bundle(name: str, verify: bool = False) -> Bundle:
    """The bundle's record; `verify` hashes every file now, where otherwise each is hashed as it
    is read (:meth:`Bundle.read`)."""
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
        meta = strictjson.loads(meta_path.read_text(), parse_float=_finite_float)
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
        parent = load_bundle(parent_name)
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
                out.append(load_bundle(child.name))
            except WeightsError:
                continue
    return out


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


