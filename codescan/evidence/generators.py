"""Model and tool names found in metadata → the generator family a reader recognises.

Generation tools record the checkpoint file they loaded (``sd_xl_base_1.0.safetensors``,
``flux1-dev-fp8.safetensors``); users want "SDXL" or "FLUX.1 [dev]". The table is ordered:
the first pattern that matches wins, so specific names (SDXL Turbo) come before the families
that contain them (SDXL). A name no pattern knows is reported as written (minus the file
extension): a fine-tune's own name is still the best answer we have.
"""

from __future__ import annotations

import re

_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"flux.?1.?.?dev|flux.?dev", "FLUX.1 [dev]"),
    (r"flux.?1.?.?schnell|flux.?schnell", "FLUX.1 [schnell]"),
    (r"flux.?1.?.?kontext|kontext", "FLUX.1 Kontext"),
    (r"flux", "FLUX"),
    (r"chroma", "Chroma"),
    (r"sd3\.5|sd3_5|sd35|stable.diffusion.3\.5", "Stable Diffusion 3.5"),
    (r"sd3|stable.diffusion.3", "Stable Diffusion 3"),
    (r"sd.?xl.?turbo|sdxlturbo", "SDXL Turbo"),
    (r"sd.?xl.?lightning", "SDXL Lightning"),
    (r"sd_xl|sd-xl|sdxl|stable.diffusion.xl", "SDXL"),
    (r"sd.?turbo", "SD Turbo"),
    (r"stable.?cascade|wuerstchen", "Stable Cascade"),
    (r"v1-5|sd.?1\.?5|sd15|stable.diffusion.v?1\.5", "Stable Diffusion 1.5"),
    (r"v1-4|sd.?1\.?4|stable.diffusion.v?1\.4", "Stable Diffusion 1.4"),
    (r"v2-1|v2-0|sd.?2\.?[01]|sd2[01]|stable.diffusion.v?2", "Stable Diffusion 2"),
    (r"pixart", "PixArt"),
    (r"hunyuan", "HunyuanDiT"),
    (r"kolors", "Kolors"),
    (r"aura.?flow", "AuraFlow"),
    (r"hidream", "HiDream"),
    (r"qwen.?image", "Qwen-Image"),
    (r"lumina", "Lumina"),
    (r"playground", "Playground"),
    (r"kandinsky", "Kandinsky"),
    (r"omnigen", "OmniGen"),
    (r"cosmos", "Cosmos"),
)
_COMPILED = tuple((re.compile(p, re.IGNORECASE), name) for p, name in _FAMILIES)
_WEIGHT_SUFFIX = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", re.IGNORECASE)
MAX_NAME = 256  # characters of a file name matched: real ones are short, a hostile one costs no more


def family(model: str) -> str:
    """The family name for a checkpoint or model name; the bare name when no pattern knows it."""
    base = _WEIGHT_SUFFIX.sub("", model.strip().replace("\\", "/").rsplit("/", 1)[-1][:MAX_NAME])
    for pattern, name in _COMPILED:
        if pattern.search(base):
            return name
    return base


def families(models: list[str]) -> str | None:
    """Distinct families in first-seen order, joined with " + " (base model plus refiner, say)."""
    seen = dict.fromkeys(f for f in map(family, models) if f)  # an ordered set: linear in the names
    return " + ".join(seen) or None


# Names that only AI image generators write into Software / CreatorTool fields. Matched as
# words, case-insensitively; general editors (Photoshop, GIMP) never appear here.
_AI_SOFTWARE = re.compile(
    r"\b(midjourney|dall[-·‑ ]?e(?: ?[23])?|adobe firefly|google imagen|stable diffusion|novelai|leonardo\.ai|ideogram|"
    r"craiyon|dreamstudio|nightcafe|bing image creator|image creator from microsoft|invokeai|comfyui|"
    r"automatic1111|fooocus|google gemini|gpt-4o|gpt-image-1)\b",
    re.IGNORECASE,
)


def ai_software(value: str) -> str | None:
    """The AI generator a Software/CreatorTool value names, as written, or None."""
    m = _AI_SOFTWARE.search(value)
    return m.group(1) if m else None
