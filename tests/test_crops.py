"""`scan --crops 5` (#17 item 4): the boxes and aggregation of `eval --crops 5`, the centre box
equal to the default scan, its own cache entries, and refusals where it cannot apply."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_cli, textured_image

from codescan.decoding.decode import DecodeLimits


def results(stdout: bytes) -> list[dict]:
    return [r for r in map(json.loads, stdout.decode().splitlines()) if r["type"] == "result"]


def test_five_crops_score_each_box_and_keep_the_max(home, tmp_path):
    from codescan.decoding.decode import decode_bytes
    from codescan.inputs.read import read_limited

    def decode_five_file(path: str, limits: DecodeLimits):  # as the decode workers cut `--crops 5`
        return decode_bytes(read_limited(path, limits.max_filesize), limits, path, crops=5)

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for name, (w, h) in {"big.png": (600, 500), "small.png": (150, 100), "wide.jpg": (900, 230)}.items():
        textured_image(rng, w, h).save(folder / name)
    cache = tmp_path / "cache.sqlite3"
    one = results(run_cli("scan", str(folder), "-q", "--no-cache", "--head", "all").stdout)
    five_run = run_cli("scan", str(folder), "-q", "--cache", str(cache), "--head", "all", "--crops", "5")
    assert five_run.returncode in (0, 1), five_run.stderr.decode()
    header = json.loads(five_run.stdout.decode().splitlines()[0])
    assert header["crops"] == 5
    five = results(five_run.stdout)
    for single, multi in zip(one, five):
        assert "boxes" not in single and len(multi["boxes"]) == 5
        path = multi["path"]
        assert [b["box"] for b in multi["boxes"]] == [list(b) for b in decode_five_file(path, DecodeLimits()).boxes]
        assert multi["boxes"][0]["box"] == single["crop"]  # the centre box is the reference's
        for head, verdict in multi["heads"].items():
            per_box = [b["scores"][head] for b in multi["boxes"]]
            assert per_box[0] == single["heads"][head]["score"]  # same engine, same pixels, same score
            assert verdict["score"] == max(per_box)  # eval --crops 5's aggregation
        best = max(multi["boxes"], key=lambda b: b["scores"]["linear"])
        assert multi["crop"] == best["box"] and multi["score"] == best["scores"]["linear"]
    small = next(r for r in five if r["path"].endswith("small.png"))
    assert all(b["box"] == [0, 0, 150, 100] for b in small["boxes"])  # nothing to move: every crop is the image

    again = results(run_cli("scan", str(folder), "-q", "--cache", str(cache), "--head", "all", "--crops", "5").stdout)
    assert again == five  # the cache holds every box's scores
    plain = results(run_cli("scan", str(folder), "-q", "--cache", str(cache), "--head", "all").stdout)
    assert plain == one  # the crop mode is in the cache key: a 5-crop row never answers a 1-crop scan

    out = tmp_path / "v.jsonl"
    out.write_text(five_run.stdout.decode().splitlines()[0] + "\n")
    refused = run_cli("scan", str(folder), "-q", "--head", "all", "--resume", str(out))
    assert refused.returncode == 2 and b"different crops" in refused.stderr  # one question per file
    with_ray = run_cli("scan", str(folder), "-q", "--crops", "5", "--ray", "local")
    assert with_ray.returncode == 2 and b"--crops 5" in with_ray.stderr
