"""Provenance evidence read from a file's own bytes: generator parameters, EXIF, XMP, C2PA.

The model judges pixels; this module reports what the file says about itself. The two stay
apart in every record (``status`` is the model's, ``evidence`` is this), and ``combined``
(records.Result) joins them. Details never quote prompts: a record should not leak the text
someone typed, and a prompt can be megabytes long.

Evidence is best-effort, because whoever made the file wrote its metadata: it must never
decide whether the pixels are judged. Each reader runs under one guard (`Findings.add`): an
exception or a limit inside it costs that reader's findings, never the file. Every parser
here is linear in the metadata size (no regex that can backtrack on the file's text), and a
file's evidence is bounded: identical items merged, at most MAX_ITEMS of them, each detail
and generator cut and stripped of control characters, MAX_BYTES in all.

Readers are pure functions over containers.Metadata. C2PA verification and the watermark
decoder live in optional libraries and are passed in by the caller (workers), so this module
imports neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, ParamSpec

from codescan.core.records import Evidence
from codescan.core.textsafe import strip_controls
from codescan.evidence.containers import Metadata, read_metadata
from codescan.evidence.generators import ai_software, families, family

# Bump when a reader changes what it reports: cached evidence of an older version is redone.
# 2: readers guarded and bounded, quoted text stripped of control characters.
EVIDENCE_VERSION = 2

MAX_ITEMS = 32  # distinct items per file: a real file has one to three
MAX_BYTES = 16 << 10  # UTF-8 bytes of all details and generators of one file
MAX_DETAIL = 300  # characters of one detail
MAX_GENERATOR = 120  # characters of one generator name
MAX_SETTING = 80  # characters of one setting quoted in a detail (an A1111 model name, say)
MAX_DISTINCT = 64  # distinct values of one field a reader looks at (CreatorTools, model names)
MAX_SETTINGS = 512  # items of an A1111 settings line (a real one has a few dozen)

# IPTC digital source types that declare AI involvement; True = conclusive.
_AI_SOURCE_TYPES: dict[str, bool] = {
    "trainedalgorithmicmedia": True,  # created by a trained model
    "compositewithtrainedalgorithmicmedia": True,  # real content edited with a trained model
    "algorithmicmedia": False,  # made by an algorithm without training data (fractals, renders)
    "compositesynthetic": False,
}
# Each starts with a literal and its repeats are bounded or end at the first mismatch: linear.
_SOURCE_TYPE_RE = re.compile(r"digitalsourcetype/(\w+)", re.IGNORECASE)
_CREATOR_TOOL_RE = re.compile(r"CreatorTool(?:=\"([^\"]{1,200})\"|>([^<]{1,200})<)")
_COMFY_LOADER_RE = re.compile(r"checkpointloader|unetloader", re.IGNORECASE)
_A1111_SHOWN = ("Steps", "Sampler", "Model", "Version")
# The rest of a quoted value: possessive, so a quote left open fails in one pass, never backtracks.
_QUOTED_TAIL = re.compile(r'(?:[^"\\]++|\\.)*+"', re.DOTALL)
_A1111_WANTED = frozenset({*_A1111_SHOWN, "Seed", "CFG scale"})
_COMFY_MODEL_INPUTS = ("ckpt_name", "unet_name")

C2paReader = Callable[[bytes, str], Evidence | None]
P = ParamSpec("P")


class EvidenceLimit(Exception):
    """A reader met more than it will look at: it gives up rather than report part of it."""


class Findings:
    """The evidence of one file, bounded whatever the readers yield."""

    def __init__(self, found: Iterable[Evidence] = ()) -> None:
        self._items: dict[Evidence, None] = {}  # ordered set: identical items merge
        self._bytes = 0
        self.add(lambda: found)

    def items(self) -> list[Evidence]:
        return list(self._items)

    def has(self, kind: str) -> bool:
        return any(e.kind == kind for e in self._items)

    def add(self, reader: Callable[P, Iterable[Evidence]], *args: P.args, **kwargs: P.kwargs) -> None:
        """Run one reader: its items until the file's caps are reached, or none if it raises.

        None rather than the items before the exception, so that a reader stopped half-way
        never leaves a misleading part; and any Exception, since a parser bug on hostile
        metadata must cost evidence, not the file.
        """
        batch: dict[Evidence, None] = {}
        size = self._bytes
        try:
            for found in reader(*args, **kwargs):
                item = _bounded(found)
                cost = len(item.detail.encode()) + len((item.generator or "").encode())
                if item in self._items or item in batch:
                    continue
                if len(self._items) + len(batch) >= MAX_ITEMS or size + cost > MAX_BYTES:
                    break
                batch[item] = None
                size += cost
        except Exception:  # noqa: BLE001 - see the docstring: no evidence from this reader
            return
        self._items.update(batch)
        self._bytes = size


def _bounded(item: Evidence) -> Evidence:
    generator = _quoted(item.generator, MAX_GENERATOR) if item.generator is not None else None
    return replace(item, detail=_quoted(item.detail, MAX_DETAIL), generator=generator or None)


def _quoted(text: str, limit: int) -> str:
    """Text from a file as a record may show it: no control, bidi or lone surrogate character
    (they can rewrite a terminal, reorder a line or break an encoder), and at most `limit` long."""
    clean = strip_controls(text[: 4 * limit].encode("utf-8", "replace").decode("utf-8")).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def metadata_evidence(data: bytes, c2pa: C2paReader | None = None, mime: str = "") -> list[Evidence]:
    """Everything the metadata says, in a fixed order: parameters, software, source type, C2PA."""
    meta, exif = _parsed(data)
    found = Findings()
    found.add(_generation_parameters, meta.text)
    found.add(_comfyui, meta.text.get("prompt"), meta.text.get("workflow"))
    found.add(_novelai, meta.text)
    found.add(_invokeai, meta.text)
    if not found.has("a1111"):
        found.add(_a1111, exif.get("user_comment"), "EXIF UserComment")
    found.add(_software, "EXIF Software", [exif.get("software")])
    if not found.has("novelai"):
        found.add(_software, "PNG text 'Software'", [meta.text.get("Software")])
    found.add(_creator_tools, meta.xmp)
    found.add(_source_types, meta.xmp)
    if meta.c2pa:
        found.add(_c2pa, c2pa, data, mime)
    return found.items()


def _parsed(data: bytes) -> tuple[Metadata, dict[str, str]]:
    """The container's blocks and the EXIF fields; empty where a parser fails (no evidence, no error)."""
    try:
        meta = read_metadata(data)
    except Exception:  # noqa: BLE001 - the containers' walk promises not to raise; if it does, nothing is known
        return Metadata(), {}
    return meta, _exif_fields(meta.exif)


def _generation_parameters(text: dict[str, str]) -> Iterator[Evidence]:
    """AUTOMATIC1111 and Fooocus both write a 'parameters' chunk: text or a JSON object."""
    params = text.get("parameters")
    if params is None:
        return
    if params.lstrip().startswith("{"):
        yield from _fooocus(params)
    else:
        yield from _a1111(params, "PNG text 'parameters'")


def _a1111(params: str | None, where: str) -> Iterator[Evidence]:
    """AUTOMATIC1111's block: prompt lines, then one 'Key: value, Key: value' settings line."""
    lines = [line for line in (params or "").strip().splitlines() if line.strip()]
    if not lines or "Steps: " not in lines[-1]:
        return
    kv = _a1111_settings(lines[-1])
    if "Steps" not in kv or not {"Sampler", "Seed", "CFG scale"} & kv.keys():
        return
    shown = ", ".join(f"{k} {kv[k][:MAX_SETTING]}" for k in _A1111_SHOWN if kv.get(k))
    model = kv.get("Model")
    yield Evidence("a1111", f"{where}: {shown}", family(model) if model else "Stable Diffusion", conclusive=True)


def _a1111_settings(line: str) -> dict[str, str]:
    """The settings line's known keys, in one left-to-right pass (the last of a key wins, as A1111 reads it).

    Items are 'Key: value' separated by commas; a value that starts with a double quote runs
    to the closing unescaped quote, commas included (A1111 quotes 'Lora hashes' so). Every
    search starts where the last one ended, unlike a regex tried again at every offset, and a
    line of more than MAX_SETTINGS items is no A1111 line (EvidenceLimit).
    """
    out: dict[str, str] = {}
    pos, end = 0, len(line)
    unclosed_from = end + 1  # a quote opened at or after this offset has no closing quote
    for _ in range(MAX_SETTINGS):
        if pos >= end:
            return out
        comma = _find(line, ",", pos, end)
        colon = _find(line, ":", pos, comma)
        value = line[colon + 1 : comma].lstrip()
        start = comma - len(value)
        if value.startswith('"') and start < unclosed_from:
            closing = _QUOTED_TAIL.match(line, start + 1)
            if closing is None:
                unclosed_from = start  # no later quote closes either: the scan went to the end
            else:
                value, comma = line[start + 1 : closing.end() - 1], _find(line, ",", closing.end(), end)
        key = line[pos:colon].strip()
        if colon < comma and key in _A1111_WANTED:
            out[key] = value.strip()
        pos = comma + 1
    if pos < end:
        raise EvidenceLimit(f"more than {MAX_SETTINGS} settings")
    return out


def _find(text: str, char: str, start: int, end: int) -> int:
    """The offset of `char` in text[start:end], or `end`."""
    found = text.find(char, start, end)
    return end if found < 0 else found


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _fooocus(params: str) -> Iterator[Evidence]:
    doc = _json(params)
    if not isinstance(doc, dict) or not isinstance(doc.get("base_model"), str):
        return
    version = doc.get("version") if isinstance(doc.get("version"), str) else "Fooocus"
    yield Evidence("fooocus", f"PNG text 'parameters' ({version})", family(doc["base_model"]), conclusive=True)


def _comfyui(prompt: str | None, workflow: str | None) -> Iterator[Evidence]:
    """ComfyUI saves the executed graph ('prompt') and the editor graph ('workflow')."""
    models: list[str] = []
    sampled = False
    graph = _json(prompt)
    if isinstance(graph, dict):
        nodes = [n for _, n in sorted(graph.items(), key=lambda kv: _node_order(kv[0])) if isinstance(n, dict)]
        for node in nodes:
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            models += [inputs[k] for k in _COMFY_MODEL_INPUTS if isinstance(inputs.get(k), str)]
            sampled = sampled or _is_sampler(node.get("class_type"))
    editor = _json(workflow)
    if isinstance(editor, dict) and isinstance(editor.get("nodes"), list):
        for node in editor["nodes"]:
            if not isinstance(node, dict) or not isinstance(node.get("type"), str):
                continue
            values = node.get("widgets_values")
            if _COMFY_LOADER_RE.search(node["type"]) and isinstance(values, list) and values:
                if isinstance(values[0], str):
                    models.append(values[0])
            sampled = sampled or _is_sampler(node["type"])
    if graph is None and editor is None:
        return
    models = list(_distinct(models))
    chunks = " and ".join(f"'{k}'" for k, v in (("prompt", prompt), ("workflow", workflow)) if v is not None)
    named = ", ".join(m[:MAX_SETTING] for m in models[:3])
    detail = f"PNG text {chunks}" + (f"; models {named}" if models else "")
    detail += "" if sampled else "; no sampler node (an edit or upscale graph)"
    yield Evidence("comfyui", detail, families(models), conclusive=sampled)


def _is_sampler(class_type: object) -> bool:
    return isinstance(class_type, str) and "sampler" in class_type.lower()


def _node_order(key: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, without int(): str.isdigit() also accepts '²' and '①',
    which int() refuses, and int() refuses more than 4300 digits."""
    if key.isascii() and key.isdigit():
        digits = key.lstrip("0")
        return (0, len(digits), digits)
    return (1, 0, key)


def _distinct(values: Iterable[str]) -> Iterator[str]:
    """First occurrences, in order; EvidenceLimit past MAX_DISTINCT of them (no real file has that many)."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            continue
        if len(seen) == MAX_DISTINCT:
            raise EvidenceLimit(f"more than {MAX_DISTINCT} distinct values")
        seen.add(value)
        yield value


def _novelai(text: dict[str, str]) -> Iterator[Evidence]:
    if text.get("Software", "").strip() == "NovelAI":
        source = text.get("Source", "").strip()
        yield Evidence("novelai", "PNG text 'Software' NovelAI", source or "NovelAI", conclusive=True)


def _invokeai(text: dict[str, str]) -> Iterator[Evidence]:
    key = next((k for k in ("invokeai_metadata", "sd-metadata", "Dream") if k in text), None)
    if key is not None:
        model = _invoke_model(text[key])
        yield Evidence("invokeai", f"PNG text '{key}'", family(model) if model else None, conclusive=True)


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
            text = _user_comment(comment)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no evidence either way
        return out
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


def _software(where: str, values: Iterable[str | None]) -> Iterator[Evidence]:
    """A Software or CreatorTool field that names an AI generator; general editors are no evidence."""
    for value in _distinct(v for v in values if v is not None):
        name = ai_software(value)
        if name is not None:
            yield Evidence("software", f"{where}: {value.strip()[:MAX_SETTING]}", name, conclusive=True)


def _creator_tools(xmps: list[str]) -> Iterator[Evidence]:
    values = (a or b for xmp in xmps for a, b in (m.groups() for m in _CREATOR_TOOL_RE.finditer(xmp)))
    yield from _software("XMP CreatorTool", values)


def ai_source_type(value: str) -> bool | None:
    """For an IPTC digital source type (URI or bare code): True = declares AI (conclusive),
    False = algorithmic but not necessarily AI, None = not an AI source type."""
    return _AI_SOURCE_TYPES.get(value.rsplit("/", 1)[-1].lower())


def _source_types(xmps: list[str]) -> Iterator[Evidence]:
    """Each AI source type once, as first written (there are only four)."""
    seen: set[str] = set()
    for match in (m for xmp in xmps for m in _SOURCE_TYPE_RE.finditer(xmp)):
        code = match.group(1)
        conclusive = ai_source_type(code)
        if conclusive is not None and code.lower() not in seen:
            seen.add(code.lower())
            yield Evidence("digital_source_type", f"XMP DigitalSourceType {code}", None, conclusive)


def _c2pa(reader: C2paReader | None, data: bytes, mime: str) -> Iterator[Evidence]:
    verified = reader(data, mime) if reader is not None else None
    yield verified or Evidence("c2pa", "C2PA manifest present, not verified: install codescan[c2pa]")
