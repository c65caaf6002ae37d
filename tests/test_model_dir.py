"""The model folder written by train / convert-reference and read by outpaint."""

import json
import os

import pytest
import torch

from opama_model.model_dir import MODEL_FILE, ModelFolderError, load_model_dir, save_model_dir
from opama_model.presets import build_components


def test_round_trip_trained_parts_bit_for_bit(tmp_path):
    c = build_components("tiny", conditioner="opama", seed=0)
    with torch.no_grad():
        for p in list(c.conditioner.parameters()) + list(c.unet.parameters()):
            p.add_(0.01)
    old = os.umask(0o022)
    try:
        d = save_model_dir(c, tmp_path / "model", trained=("conditioner", "unet"), extra={"steps": 7})
    finally:
        os.umask(old)
    info = json.loads((d / MODEL_FILE).read_text())
    assert info["preset"] == "tiny" and info["conditioner"] == "opama" and info["steps"] == 7
    assert not (d / "vae").exists()  # untrained parts are not stored
    assert oct(d.stat().st_mode & 0o777) == oct(0o755) and oct((d / MODEL_FILE).stat().st_mode & 0o777) == oct(0o644)
    c2 = load_model_dir(d)
    for part in ("conditioner", "unet", "vae", "text_encoder"):
        a, b = getattr(c, part).state_dict(), getattr(c2, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert not any(p.requires_grad for p in c2.unet.parameters())
    # replacing an existing folder leaves no temp or old folder behind
    save_model_dir(c, d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_bad_model_folders(tmp_path):
    with pytest.raises(ModelFolderError, match="not a folder"):
        load_model_dir(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelFolderError, match="opama_model.json: missing"):
        load_model_dir(tmp_path / "m")
    (tmp_path / "m" / MODEL_FILE).write_text("{bad")
    with pytest.raises(ModelFolderError, match="unreadable"):
        load_model_dir(tmp_path / "m")
    (tmp_path / "m" / MODEL_FILE).write_text(json.dumps(
        {"format": "opama-model", "version": 1, "preset": "tiny", "conditioner": "opama", "trained": ["conditioner"]}))
    with pytest.raises(ModelFolderError, match="conditioner: missing or incomplete"):
        load_model_dir(tmp_path / "m")


def test_failed_save_keeps_the_old_folder(tmp_path, monkeypatch):
    """The folder swap of opama_model.fileio: a save that fails half-way leaves the previous
    model folder as it was and no temp folder behind."""
    c = build_components("tiny", conditioner="opama", seed=0)
    d = save_model_dir(c, tmp_path / "model", extra={"steps": 1})
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}

    def half_save(folder, *a, **k):
        os.makedirs(folder, exist_ok=True)
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(c.conditioner, "save_pretrained", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(c, d, extra={"steps": 2})
    assert {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
