"""Provenance evidence read from a file's own bytes: generator parameters, EXIF, XMP, C2PA.

The model judges pixels; this module reports what the file says about itself. The two stay
apart in every record (``status`` is the model's, ``evidence`` is this), and ``combined``
(records.Result) joins them. Details never quote prompts: a record should not leak the text
someone typed, and a prompt can be megabytes long.

Readers are pure functions over containers.Metadata. C2PA verification and the watermark
decoder live in optional libraries and are passed in by the caller (workers), so this module
imports neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from .containers import Metadata, read_metadata
from .generators import ai_software, families, family
from .records import Evidence

# Bump when a reader changes what it reports: cached evidence of an older version is redone.
EVIDENCE_VERSION = 1

# IPTC digital source types that declare AI involvement; True = conclusive.
_AI_SOURCE_TYPES: dict[str, bool] = {
    "trainedalgorithmicmedia": True,  # created by a trained model
    "compositewithtrainedalgorithmicmedia": True,  # real content edited with a trained model
    "algorithmicmedia": False,  # made by an algorithm without training data (fractals, renders)
    "compositesynthetic": False,
}
_SOURCE_TYPE_RE = re.compile(r"digitalsourcetype/(\w+)", re.IGNORECASE)
_CREATOR_TOOL_RE = re.compile(r"CreatorTool(?:=\"([^\"]{1,200})\"|>([^<]{1,200})<)")
_A1111_KV = re.compile(r"\s*([A-Za-z][\w /-]{0,40}?):\s*(\"(?:[^\"\\]|\\.)*\"|[^,]*)")
_A1111_SHOWN = ("Steps", "Sampler", "Model", "Version")
_COMFY_MODEL_INPUTS = ("ckpt_name", "unet_name")

C2paReader = Callable[[bytes, str], Evidence | None]


def metadata_evidence(data: bytes, c2pa: C2paReader | None = None, mime: str = "") -> list[Evidence]:
    """Everything the metadata says, in a fixed order: parameters, software, source type, C2PA."""
    meta = read_metadata(data)
    exif = _exif_fields(meta.exif)
    out = _generation_parameters(meta.text)
    if "user_comment" in exif and not any(e.kind == "a1111" for e in out):
        found = _a1111(exif["user_comment"], "EXIF UserComment")
        if found is not None:
            out.append(found)
    out += _software(meta, exif, skip_png_software=any(e.kind == "novelai" for e in out))
    out += _source_types(meta.xmp)
    if meta.c2pa:
        verified = c2pa(data, mime) if c2pa is not None else None
        out.append(verified or Evidence("c2pa", "C2PA manifest present, not verified: install codescan[c2pa]"))
    return out


def _generation_parameters(text: dict[str, str]) -> list[Evidence]:
    out: list[Evidence] = []
    params = text.get("parameters")
    if params is not None:
        found = _fooocus(params) if params.lstrip().startswith("{") else _a1111(params, "PNG text 'parameters'")
        if found is not None:
            out.append(found)
    if "prompt" in text or "workflow" in text:
        found = _comfyui(text.get("prompt"), text.get("workflow"))
        if found is not None:
            out.append(found)
    if text.get("Software", "").strip() == "NovelAI":
        source = text.get("Source", "").strip()
        out.append(Evidence("novelai", "PNG text 'Software' NovelAI", source or "NovelAI", conclusive=True))
    invoke = next((k for k in ("invokeai_metadata", "sd-metadata", "Dream") if k in text), None)
    if invoke is not None:
        model = _invoke_model(text[invoke])
        out.append(Evidence("invokeai", f"PNG text '{invoke}'", family(model) if model else None, conclusive=True))
    return out


def _a1111(params: str, where: str) -> Evidence | None:
    """AUTOMATIC1111's block: prompt lines, then one 'Key: value, Key: value' settings line."""
    lines = [line for line in params.strip().splitlines() if line.strip()]
    if not lines or "Steps: " not in lines[-1]:
        return None
    kv = {m.group(1).strip(): m.group(2).strip().strip('"') for m in _A1111_KV.finditer(lines[-1])}
    if "Steps" not in kv or not {"Sampler", "Seed", "CFG scale"} & kv.keys():
        return None
    shown = ", ".join(f"{k} {kv[k]}" for k in _A1111_SHOWN if kv.get(k))
    model = kv.get("Model")
    return Evidence("a1111", f"{where}: {shown}", family(model) if model else "Stable Diffusion", conclusive=True)


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _fooocus(params: str) -> Evidence | None:
    doc = _json(params)
    if not isinstance(doc, dict) or not isinstance(doc.get("base_model"), str):
        return None
    version = doc.get("version") if isinstance(doc.get("version"), str) else "Fooocus"
    return Evidence("fooocus", f"PNG text 'parameters' ({version})", family(doc["base_model"]), conclusive=True)


def _comfyui(prompt: str | None, workflow: str | None) -> Evidence | None:
    """ComfyUI saves the executed graph ('prompt') and the editor graph ('workflow')."""
    models: list[str] = []
    sampled = False
    graph = _json(prompt)
    if isinstance(graph, dict):
        nodes = [n for _, n in sorted(graph.items(), key=lambda kv: _node_order(kv[0])) if isinstance(n, dict)]
        for node in nodes:
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            models += [inputs[k] for k in _COMFY_MODEL_INPUTS if isinstance(inputs.get(k), str)]
            sampled = sampled or "sampler" in str(node.get("class_type", "")).lower()
    editor = _json(workflow)
    if isinstance(editor, dict) and isinstance(editor.get("nodes"), list):
        for node in editor["nodes"]:
            if not isinstance(node, dict):
                continue
            kind = str(node.get("type", ""))
            values = node.get("widgets_values")
            if re.search(r"checkpointloader|unetloader", kind, re.IGNORECASE) and isinstance(values, list) and values:
                if isinstance(values[0], str) and values[0] not in models:
                    models.append(values[0])
            sampled = sampled or "sampler" in kind.lower()
    if graph is None and editor is None:
        return None
    chunks = " and ".join(f"'{k}'" for k, v in (("prompt", prompt), ("workflow", workflow)) if v is not None)
    detail = f"PNG text {chunks}" + (f"; models {', '.join(models[:3])}" if models else "")
    detail += "" if sampled else "; no sampler node (an edit or upscale graph)"
    return Evidence("comfyui", detail, families(models), conclusive=sampled)


def _node_order(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 62, key)


def _invoke_model(text: str) -> str | None:
    doc = _json(text)
    if not isinstance(doc, dict):
        return None
    model = doc.get("model") or doc.get("model_weights")
    if isinstance(model, dict):
        model = model.get("name") or model.get("model_name")
    return model if isinstance(model, str) else None


def _exif_fields(tiff: bytes | None) -> dict[str, str]:
    """Software and UserComment from an EXIF block, through Pillow's parser; {} when unreadable."""
    if not tiff:
        return {}
    import warnings

    from PIL import Image

    out: dict[str, str] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on every corrupt tag; the caller only wants facts
            exif = Image.Exif()
            exif.load(b"Exif\x00\x00" + tiff)
            software = exif.get(0x0131)
            if isinstance(software, str) and software.strip():
                out["software"] = software.strip("\x00 ")
            comment = exif.get_ifd(0x8769).get(0x9286)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no evidence either way
        return out
    text = _user_comment(comment)
    if text:
        out["user_comment"] = text
    return out


def _user_comment(raw: object) -> str | None:
    """EXIF UserComment: an 8-byte charset prefix, then the text (A1111 writes UTF-16 big-endian)."""
    if isinstance(raw, str):
        return raw.strip("\x00 ") or None
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        big_endian = len(body) >= 2 and body[0] == 0 and body[1] != 0
        text = body.decode("utf-16-be" if big_endian else "utf-16-le", "replace")
    else:
        text = body.decode("utf-8", "replace")
    return text.strip("\x00 ") or None


def _software(meta: Metadata, exif: dict[str, str], skip_png_software: bool) -> list[Evidence]:
    fields: list[tuple[str, str]] = []
    if "software" in exif:
        fields.append(("EXIF Software", exif["software"]))
    if "Software" in meta.text and not skip_png_software:
        fields.append(("PNG text 'Software'", meta.text["Software"]))
    for xmp in meta.xmp:
        fields += [("XMP CreatorTool", a or b) for a, b in _CREATOR_TOOL_RE.findall(xmp)]
    out: list[Evidence] = []
    for where, value in fields:
        name = ai_software(value)
        if name is not None:
            out.append(Evidence("software", f"{where}: {value.strip()[:120]}", name, conclusive=True))
    return out


def ai_source_type(value: str) -> bool | None:
    """For an IPTC digital source type (URI or bare code): True = declares AI (conclusive),
    False = algorithmic but not necessarily AI, None = not an AI source type."""
    return _AI_SOURCE_TYPES.get(value.rsplit("/", 1)[-1].lower())


def _source_types(xmps: list[str]) -> list[Evidence]:
    out: list[Evidence] = []
    seen: set[str] = set()
    for xmp in xmps:
        for code in _SOURCE_TYPE_RE.findall(xmp):
            conclusive = ai_source_type(code)
            if conclusive is not None and code.lower() not in seen:
                seen.add(code.lower())
                out.append(Evidence("digital_source_type", f"XMP DigitalSourceType {code}", None, conclusive))
    return out
