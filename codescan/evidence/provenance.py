"""The optional provenance libraries: C2PA (c2pa-python) and the SD/SDXL watermark
(invisible-watermark). Both are imported lazily, inside the decode worker that uses them.

C2PA: c2pa-rs verifies the manifest's signature and every hash binding it to the pixels; a
manifest whose hashes fail is reported, never conclusive. By default c2pa-rs fetches remote
manifests over the network, so the reader runs with a Context that forbids every host: a
scanner must never phone out because a file asked it to. Trust lists are not configured
(offline), so a valid signature is "Valid", not "Trusted"; the record says which.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from codescan.core.records import Evidence
from codescan.evidence.metadata import ai_source_type

if TYPE_CHECKING:
    import numpy as np

_OFFLINE = {
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    "core": {"allowed_network_hosts": []},
}
# Status codes that say nothing about integrity: the signer is merely not on a trust list we have.
_TRUST_ONLY = frozenset(
    {
        "signingCredential.untrusted",
        "signingCredential.ocsp.skipped",
        "signingCredential.ocsp.inaccessible",
        "signingCredential.ocsp.unknown",
        "timeStamp.untrusted",
    }
)


class ProvenanceError(Exception):
    """An optional library the options ask for is missing; the message says what to install."""


def c2pa_reader() -> Callable[[bytes, str], Evidence | None] | None:
    """A reader bound to this process's offline Context, or None without c2pa-python."""
    try:
        import c2pa
    except (ImportError, OSError):  # not installed, or its native library does not load here
        return None
    context = c2pa.Context.from_dict(_OFFLINE)  # per process: a Context does not survive fork

    def read(data: bytes, mime: str) -> Evidence | None:
        try:
            with c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
                store = json.loads(reader.json())
        except c2pa.C2paError.ManifestNotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - any library failure is a damaged manifest, not a crash
            message = (str(exc) or type(exc).__name__)[:200]
            return Evidence("c2pa", f"C2PA manifest present but unreadable: {message}", valid=False)
        return c2pa_evidence(store)

    return read


def c2pa_evidence(store: dict[str, Any]) -> Evidence:
    """The active manifest of a c2pa-rs manifest store (its JSON report) as one Evidence."""
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
    codes = [str(s.get("code")) for s in store.get("validation_status") or [] if isinstance(s, dict)]
    failures = [c for c in codes if c not in _TRUST_ONLY]
    state = store.get("validation_state")
    valid = not failures and state in ("Valid", "Trusted")
    claimed = _claim_generator(manifest)
    sources = _source_types(manifest)
    ai = [s for s in sources if ai_source_type(s)]
    signer = (manifest.get("signature_info") or {}).get("issuer") or (manifest.get("signature_info") or {}).get(
        "common_name"
    )
    parts = [f"C2PA manifest from {claimed or 'an unnamed claim generator'}"]
    if signer:
        parts.append(f"signed by {signer}")
    parts.append(f"{state or 'unknown state'}" + (f" ({', '.join(failures[:3])})" if failures else ""))
    if sources:
        parts.append("source type " + ", ".join(s.rsplit("/", 1)[-1] for s in sources[:4]))
    name = claimed.split("/", 1)[0] if claimed else None
    return Evidence("c2pa", "; ".join(parts), name if ai else None, conclusive=valid and bool(ai), valid=valid)


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    """v1 claims name it in a string; v2 claims in a list of {name, version} (c2pa-rs appends itself)."""
    if isinstance(manifest.get("claim_generator"), str):
        return manifest["claim_generator"]
    infos = manifest.get("claim_generator_info") or []
    infos = [infos] if isinstance(infos, dict) else infos
    for info in infos:
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            version = info.get("version")
            return f"{info['name']}/{version}" if isinstance(version, str) and version else info["name"]
    return None


def _source_types(manifest: dict[str, Any]) -> list[str]:
    """Distinct source types of the actions assertions; their data is whatever the file holds."""
    out: dict[str, None] = {}  # an ordered set: linear however many actions repeat a type
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict):
            continue
        if str(assertion.get("label", "")).split("__")[0] not in ("c2pa.actions", "c2pa.actions.v2"):
            continue
        data = assertion.get("data")
        actions = data.get("actions") if isinstance(data, dict) else None
        for action in actions if isinstance(actions, list) else []:
            source = action.get("digitalSourceType") if isinstance(action, dict) else None
            if isinstance(source, str):
                out[source] = None
    return list(out)


# The reference pipelines' messages (imwatermark "dwtDct"), and how many bits must match.
# Thresholds from the scan of 239 real photos of the labelled corpus: the best match there was
# 84/136, 23/32 and 32/48; each threshold has a chance rate below 2e-6 for random bits.
_SDXL_MESSAGE = 0b101100111110110010010000011110111011000110011110  # Stability generative-models / diffusers
_WATERMARKS: tuple[tuple[str, list[int], int], ...] = (
    ("Stable Diffusion 1.x", [int(b) for b in "".join(f"{c:08b}" for c in b"StableDiffusionV1")], 102),
    ("Stable Diffusion 2.x", [int(b) for b in "".join(f"{c:08b}" for c in b"SDV2")], 29),
    ("SDXL", [int(b) for b in f"{_SDXL_MESSAGE:b}"], 41),
)
_MIN_PIXELS = 256 * 256  # the library refuses smaller images; the pipelines never mark them


def require_watermark() -> None:
    """Fail early, in the scan process, without importing the library (it imports torch)."""
    if importlib.util.find_spec("imwatermark") is None:
        raise ProvenanceError("--evidence all needs the watermark extra: pip install 'codescan[watermark]'")


def watermark_detector(decode_full: Callable[[bytes], np.ndarray]) -> Callable[[bytes], list[Evidence]]:
    """A detector for the invisible watermark of the SD 1/2 and SDXL reference pipelines.

    It needs every pixel at full resolution (any resize or crop destroys the mark, and JPEG
    re-encoding usually does), so the image is decoded in full: `--evidence all` only. Both
    channel orders are tried: the CompVis and Stability scripts embed in BGR as the library
    expects, diffusers' SDXL watermarker long passed RGB. `decode_full` is the decode workers'
    own full decode under the scan's limits (bytes → (H, W, 3) uint8, DecodeFailure otherwise),
    handed in: evidence sits below decoding and never imports it.
    """
    require_watermark()
    import numpy as np
    from imwatermark import WatermarkDecoder

    from codescan.inputs.read import DecodeFailure

    def detect(data: bytes) -> list[Evidence]:
        try:
            rgb = decode_full(data)  # (H, W, 3) uint8
        except DecodeFailure:
            return []
        height, width = rgb.shape[:2]
        if height * width < _MIN_PIXELS or min(height, width) < 8:
            return []
        orders = (np.ascontiguousarray(rgb[..., ::-1]), np.ascontiguousarray(rgb))  # BGR as specified, RGB as diffusers
        found: list[Evidence] = []
        for name, message, needed in _WATERMARKS:
            decoder = WatermarkDecoder("bits", len(message))
            matched = max(sum(int(a) == b for a, b in zip(decoder.decode(img, "dwtDct"), message)) for img in orders)
            if matched >= needed:
                detail = f"{name} reference-pipeline invisible watermark (dwtDct): {matched}/{len(message)} bits"
                found.append(Evidence("watermark", detail, name, conclusive=True))
        return found

    return detect
