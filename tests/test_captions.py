"""Caption loader: opama JSONL and AOG-Net's published {file name: [captions]} files (real ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opama_tools.data.captions import (
    LAVAL_CAPTIONS,
    laval_split,
    CaptionIndex,
    PanoramaCaptions,
    ViewCaption,
    load_captions,
    read_aognet_json,
    read_caption_jsonl,
)

# The published caption files ship with the package (JSON copies of AOG-Net/OPa-Ma's pickles).
LAVAL = LAVAL_CAPTIONS


def needs_laval(fn):  # the files are part of the package: a missing one is a failure, not a skip
    return fn


def _raw(name: str) -> dict:
    return json.loads((LAVAL / name).read_text())


@needs_laval
def test_aognet_global_and_aug_files_merge():
    idx = load_captions(LAVAL / "indoor_train.json", LAVAL / "indoor_train_aug.json")
    glob, aug = _raw("indoor_train.json"), _raw("indoor_train_aug.json")
    assert len(idx) == len(glob) == len(set(glob) | set(aug))
    for name in list(glob)[:50] + list(glob)[-50:]:
        caps = idx[name]
        assert caps.caption == " ".join(glob[name][0].split())
        assert caps.view_captions == [" ".join(c.split()) for c in aug[name]]
        assert all(v.yaw is None for v in caps.views)  # the published yaws are unusable
    # Looked up from any path to the panorama: prepared PNG, original EXR, absolute path.
    name = next(iter(glob))
    stem = Path(name).stem
    assert idx.get(f"/data/laval/indoor/{stem}.exr") is idx[name]
    assert idx.get(f"prepared/{name}") is idx[name]
    assert idx.caption(stem + ".png") == glob[name][0]
    assert len(idx.view_captions(name)) == 12


@needs_laval
@pytest.mark.parametrize("fname", ["indoor_test.json", "outdoor_train.json", "outdoor_test.json"])
def test_aognet_single_caption_files(fname):
    raw = _raw(fname)
    recs = read_aognet_json(LAVAL / fname)
    assert set(recs) == set(raw)
    for name, caps in raw.items():
        assert recs[name].caption == " ".join(caps[0].split()) and recs[name].views == []
    # Outdoor names contain spaces ("9C4A0573 Panorama_hdr.png"); lookup still works.
    name = sorted(raw)[0]
    idx = CaptionIndex(recs)
    assert idx.get(Path("/x") / name.replace(".png", ".exr")) is idx[name]


@needs_laval
def test_published_splits_do_not_overlap():
    idx_train = load_captions(LAVAL / "indoor_train.json")
    for name in _raw("indoor_test.json"):
        assert name not in idx_train


def test_aognet_kind_detection_and_errors(tmp_path):
    p = tmp_path / "caps.json"
    p.write_text(json.dumps({"a.png": ["one"], "b.png": "two  words"}))
    r = read_aognet_json(p)
    assert r["a.png"].caption == "one" and r["b.png"].caption == "two words"
    p.write_text(json.dumps({"a.png": ["v1", "v2", "v3"]}))
    r = read_aognet_json(p)
    assert r["a.png"].caption is None and r["a.png"].view_captions == ["v1", "v2", "v3"]
    r = read_aognet_json(p, kind="global")
    assert r["a.png"].caption == "v1" and r["a.png"].view_captions == ["v2", "v3"]
    aug = tmp_path / "x_aug.json"
    aug.write_text(json.dumps({"a.png": ["only"]}))
    assert read_aognet_json(aug)["a.png"].view_captions == ["only"]
    p.write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(ValueError, match="mapping"):
        read_aognet_json(p)
    p.write_text(json.dumps({"a.png": [1, 2]}))
    with pytest.raises(ValueError, match="a.png"):
        read_aognet_json(p)
    with pytest.raises(FileNotFoundError):
        load_captions(tmp_path / "nope.json")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown caption file type"):
        load_captions(tmp_path / "c.txt")


def _write_jsonl(path: Path, recs: list, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)
    return path


def test_opama_jsonl(tmp_path):
    views = [{"yaw": 30 * k, "pitch": 0, "caption": f"view {k}"} for k in range(12)]
    p = _write_jsonl(tmp_path / "c.jsonl", [
        {"image": "indoor/a.png", "caption": "a room", "views": views},
        {"image": "indoor/bad.png", "error": "cannot decode image"},
        {"image": "outdoor/a.png", "caption": "a street", "views": []},
    ], tail='{"image": "indoor/c.png", "capt')  # half-written last line from a killed run
    recs = read_caption_jsonl(p)
    assert set(recs) == {"indoor/a.png", "outdoor/a.png"}
    idx = load_captions(p)
    a = idx["/data/png/indoor/a.png"]
    assert a.caption == "a room" and a.views[3] == ViewCaption("view 3", 90.0, 0.0)
    assert a.texts[0] == "a room" and len(a.texts) == 13
    assert idx.caption("outdoor/a.png") == "a street"
    # Same stem in two folders: a bare stem is ambiguous, the folder disambiguates.
    assert idx.get("a.png") is None and "a.png" not in idx
    assert idx.get("/elsewhere/outdoor/a.exr") is None  # suffix "outdoor/a.exr" differs, stem ambiguous
    assert "indoor/bad.png" not in idx
    with pytest.raises(KeyError, match="no caption"):
        idx["indoor/bad.png"]
    # Nearest view by yaw, wrapping at 360.
    assert a.nearest_view(95).yaw == 90 and a.nearest_view(350).yaw == 0 and a.nearest_view(-40).yaw == 330
    assert PanoramaCaptions("x").nearest_view(10) is None
    # A malformed line in the middle is an error naming the file and line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x", "views": []}\nnot json\n{"image": "b.png", "caption": "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        read_caption_jsonl(bad)


def test_jsonl_and_aognet_merge(tmp_path):
    j = _write_jsonl(tmp_path / "v.jsonl", [
        {"image": "p.png", "caption": None, "views": [{"yaw": 0, "pitch": 0, "caption": "front"}]}])
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"p.png": ["whole panorama"], "q.png": ["other"]}))
    idx = load_captions(j, g)
    assert idx["p.png"].caption == "whole panorama" and idx["p.png"].view_captions == ["front"]
    assert sorted(idx.keys()) == ["p.png", "q.png"]


def test_loader_reads_what_the_caption_job_writes(tmp_path):
    from opama_tools.data.caption import CaptionSettings, run_metadata_job
    from opama_tools.data.synthetic import make_scene

    png = tmp_path / "png"
    png.mkdir()
    scenes = []
    for k in range(2):
        (png / f"synth_{k:04d}.png").write_bytes(b"")  # --from-metadata does not decode images
        s = make_scene(k)
        scenes.append({"image": f"synth_{k:04d}.exr", "seed": k, "kind": s.kind, "caption": s.description,
                       "scene": s.to_dict()})
    meta = _write_jsonl(tmp_path / "scenes.jsonl", scenes)
    out = tmp_path / "caps.jsonl"
    s = run_metadata_job(png, out, meta, CaptionSettings(augment=True, stride=45), progress=False)
    assert s.done == 2
    idx = load_captions(out)
    for k, rec in enumerate(scenes):
        caps = idx[png / f"synth_{k:04d}.png"]
        assert caps.caption == rec["caption"]
        assert [v.yaw for v in caps.views] == [45.0 * i for i in range(8)]
        assert all(v.caption.startswith("a view of") for v in caps.views)


def test_laval_splits_have_published_sizes():
    assert (len(laval_split("indoor", "train")), len(laval_split("indoor", "test"))) == (1921, 312)
    assert (len(laval_split("outdoor", "train")), len(laval_split("outdoor", "test"))) == (165, 40)
    assert not set(laval_split("indoor", "train")) & set(laval_split("indoor", "test"))


def test_broken_caption_files_name_the_file_and_line(tmp_path):
    from opama_tools.data.captions import read_aognet_json, read_caption_jsonl

    cases = {
        "a.jsonl": ('{"image": "a.png", "caption": "x"}\n{"image": "b.png" "caption": 1}\n{"image": "c.png"}\n',
                    "line 2"),
        "b.jsonl": ('{"image": "a.png", "views": [{"yaw": 0}]}\n', "line 1: a view without a 'caption'"),
        "c.jsonl": ('{"image": "a.png", "views": [{"yaw": "left", "caption": "x"}]}\n', "line 1"),
        "d.jsonl": ('{"image": "a.png", "views": 3}\n', "'views' must be a list"),
    }
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=words) as e:
            read_caption_jsonl(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "bin.jsonl").write_bytes(b'{"image": "a.png"}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=r"bin.jsonl: not a captions JSONL file \(not UTF-8"):
        read_caption_jsonl(tmp_path / "bin.jsonl")
    with pytest.raises(ValueError, match="missing.jsonl: cannot read"):
        read_caption_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "aog.json").write_text('{"a.png": ["x"],\n "b.png": }')
    with pytest.raises(ValueError, match="aog.json: line 2: not JSON"):
        read_aognet_json(tmp_path / "aog.json")
