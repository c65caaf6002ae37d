"""``opama outpaint``: CLI outputs, bad input, batch (resumable, split over processes), viewer, video."""

import csv
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from opama_tools.cli import app

runner = CliRunner()
# tiny preset, 64 px views; a 64x128 canvas, 1 step and a 2-view schedule keep each run to seconds
FAST = ["--preset", "tiny", "--size", "64x128", "--steps", "1", "--views", "0,25;0,-25"]


pytestmark = pytest.mark.usefixtures("one_thread_module")


def write_photo(path, seed=0, size=64):
    a = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)
    Image.fromarray(a).save(path)
    return a


def test_single_panorama_outputs(tmp_path):
    write_photo(tmp_path / "v.png")
    out = tmp_path / "o"
    res = runner.invoke(app, ["outpaint", *FAST, "--input", f"{tmp_path / 'v.png'}@0,0,90", "--prompt", "a room",
                              "--out", str(out), "--cube", "16"])
    assert res.exit_code == 0, res.output
    pano = np.asarray(Image.open(out / "pano.png"))
    mask = np.asarray(Image.open(out / "input_mask.png")) > 0
    assert pano.shape == (64, 128, 3) and mask.shape == (64, 128) and 0 < mask.sum() < mask.size
    meta = json.loads((out / "meta.json").read_text())
    for k in ("prompt", "inputs", "seed", "procedure", "scheduler", "steps", "guidance", "views", "model_id",
              "method", "unet_passes", "seconds"):
        assert k in meta, k
    assert meta["prompt"] == "a room" and meta["inputs"][0]["yaw"] == 0.0 and meta["method"] == "opama"
    assert meta["model_id"] == "preset:tiny-random" and meta["procedure"] == "fast"
    assert meta["unet_passes"] == meta["unet_passes_expected"] == sum(v["unet_calls"] for v in meta["views"])
    assert {"condition", "denoise", "decode", "total"} <= set(meta["seconds"])
    assert all((out / f"cube_{n}.png").is_file() for n in "FRBLUD")
    assert "data:image/jpeg;base64," in (out / "index.html").read_text()
    # re-run: done already (inputs hashed), nothing redone; on a narrow terminal the message stays one line
    # (CI's 80 columns once wrapped it inside a long temp path)
    stamp = (out / "pano.png").stat().st_mtime_ns
    res = runner.invoke(app, ["outpaint", *FAST, "--input", str(tmp_path / "v.png"), "--prompt", "a room",
                              "--out", str(out), "--cube", "16"], env={"COLUMNS": "40"})
    assert res.exit_code == 0 and f"{out / 'pano.png'} already done (same inputs" in res.output, res.output
    assert (out / "pano.png").stat().st_mtime_ns == stamp
    # a changed input file is redone, and outputs no longer asked for go
    write_photo(tmp_path / "v.png", seed=1)
    res = runner.invoke(app, ["outpaint", *FAST, "--input", str(tmp_path / "v.png"), "--prompt", "a room",
                              "--out", str(out)])
    assert res.exit_code == 0 and "written" in res.output
    new = json.loads((out / "meta.json").read_text())
    assert not (out / "cube_F.png").exists() and new["source"] != meta["source"] and new["settings"] == meta["settings"]


def test_text_only_and_two_photos_from_the_cli(tmp_path):
    res = runner.invoke(app, ["outpaint", *FAST, "--prompt", "a forest", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["mode"] == "text" and meta["views"][0]["kind"] == "first"
    assert not (np.asarray(Image.open(tmp_path / "t" / "input_mask.png")) > 0).any()
    a, b = write_photo(tmp_path / "a.png", 1), write_photo(tmp_path / "b.png", 2)
    res = runner.invoke(app, ["outpaint", *FAST, "--input", f"{tmp_path / 'a.png'}@-60,0,90",
                              "--input", f"{tmp_path / 'b.png'}@60,0,90", "--out", str(tmp_path / "two")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["mode"] == "photo" and [i["yaw"] for i in meta["inputs"]] == [-60.0, 60.0]


@pytest.mark.parametrize("case", ["unreadable", "missing", "pitch", "size", "model", "weights"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case, monkeypatch):
    write_photo(tmp_path / "v.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    args = {
        "unreadable": [*FAST, "--input", str(tmp_path / "bad.png")],
        "missing": [*FAST, "--input", str(tmp_path / "nope.png")],
        "pitch": [*FAST, "--input", f"{tmp_path / 'v.png'}@0,95,90"],
        "size": ["--preset", "tiny", "--size", "64x100", "--input", str(tmp_path / "v.png")],
        "model": ["--model", str(tmp_path / "no_model"), "--input", str(tmp_path / "v.png")],
        "weights": ["--preset", "sd2", "--input", str(tmp_path / "v.png")],
    }[case]
    if case == "weights":
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        for v in ("OPAMA_SD2_INPAINT", "OPAMA_SD2_CLIP"):
            monkeypatch.delenv(v, raising=False)
    out = tmp_path / "o"
    res = runner.invoke(app, ["outpaint", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) <= 2, text
    hint = {"unreadable": "bad.png", "missing": "nope.png", "pitch": "pitch", "size": "2:1",
            "model": "no_model", "weights": "stable-diffusion-2"}[case]
    assert hint in text, text
    assert not out.exists() or not any(out.iterdir())


def test_batch_csv_resumable_with_failures(tmp_path):
    write_photo(tmp_path / "a.png", 1)
    (tmp_path / "bad.png").write_bytes(b"junk")
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt", "yaw", "pitch", "fov", "name"])
        w.writerow(["a.png", "a hall", "30", "0", "90", ""])
        w.writerow(["", "a desert", "", "", "", "text_only"])
        w.writerow(["bad.png", "x", "", "", "", ""])
    out = tmp_path / "out"
    res = runner.invoke(app, ["outpaint", *FAST, "--batch", str(tmp_path / "rows.csv"), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "2 done, 0 skipped, 1 failed" in res.output and "bad.png" in res.output
    assert json.loads((out / "a" / "meta.json").read_text())["inputs"][0]["yaw"] == 30.0
    assert json.loads((out / "text_only" / "meta.json").read_text())["mode"] == "text"
    assert not (out / "bad").exists()
    res = runner.invoke(app, ["outpaint", *FAST, "--batch", str(tmp_path / "rows.csv"), "--out", str(out)])
    assert "0 done, 2 skipped, 1 failed" in res.output


def test_batch_rows_split_over_processes(tmp_path):
    from opama_tools.outpaint import OutpaintSettings, Row, load_model, outpaint_batch

    model = load_model(preset="tiny")
    rows = [Row(f"r{i}", (), f"scene {i}") for i in range(3)]
    s = OutpaintSettings(size=(64, 128), steps=1, views=((0.0, 25.0),), viewer=False)
    r0 = outpaint_batch(rows, model, tmp_path, s, process_index=0, num_processes=2)
    r1 = outpaint_batch(rows, model, tmp_path, s, process_index=1, num_processes=2)
    assert r0.done == ["r0", "r2"] and r1.done == ["r1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0", "r1", "r2"]


def test_model_folder_from_train(tmp_path):
    from opama_model.model_dir import save_model_dir
    from opama_model.presets import build_components

    save_model_dir(build_components("tiny"), tmp_path / "model")
    write_photo(tmp_path / "v.png")
    args = ["outpaint", "--model", str(tmp_path / "model"), "--size", "64x128", "--steps", "1",
            "--views", "0,25", "--input", str(tmp_path / "v.png"), "--out", str(tmp_path / "o")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["model_id"] == f"dir:{(tmp_path / 'model').resolve()}" and meta["method"] == "opama"
    # unchanged model folder: skipped; a retrained (rewritten) weight file: redone
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "already done" in res.output, res.output
    weights = next(p for p in (tmp_path / "model").rglob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "already done" not in res.output, res.output
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["settings"] != meta["settings"]


def test_video_look_around(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg not installed")
    import imageio.v2 as iio

    from opama_tools.outpaint import write_video

    pano = (np.random.RandomState(0).rand(64, 128, 3) * 255).astype(np.uint8)
    write_video(tmp_path / "p.mp4", pano, seconds=1.0, fps=10, size=(48, 64))
    reader = iio.get_reader(tmp_path / "p.mp4", format="FFMPEG")
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 10 and frames[0].shape == (48, 64, 3)
    assert not np.array_equal(frames[0], frames[5])  # it turns


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (CI installs it: .ci/run)")
def test_viewer_renders_in_headless_chromium(tmp_path):
    from opama_tools.outpaint import write_viewer

    # green around yaw 0 (the opening direction), red elsewhere, a blue sky band
    h, w = 256, 512
    pano = np.zeros((h, w, 3), np.uint8)
    pano[...] = (200, 30, 30)
    pano[:, w // 2 - 40:w // 2 + 40] = (30, 200, 30)
    pano[: h // 8] = (30, 30, 200)
    write_viewer(tmp_path / "index.html", pano)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=320,240", "--virtual-time-budget=10000", f"--screenshot={shot}",
           (tmp_path / "index.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, cwd=tmp_path)
    assert shot.is_file(), "Chromium wrote no screenshot"
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    hh, ww = img.shape[:2]
    centre = img[hh // 2 - 5: hh // 2 + 5, ww // 2 - 5: ww // 2 + 5].reshape(-1, 3).mean(0)
    assert centre[1] > 150 and centre[0] < 80, centre  # looking at yaw 0: green
    edge = img[hh // 2, 3]
    assert edge[0] > 150 and edge[1] < 80, edge  # 90 deg fov: the sides show red
    assert img.std() > 20  # not a blank frame


def test_read_rows_folder_and_input_specs(tmp_path):
    from opama_tools.outpaint import parse_input_spec, parse_size, read_rows

    (tmp_path / "sub").mkdir()
    write_photo(tmp_path / "b.png")
    write_photo(tmp_path / "sub" / "a.jpg")
    rows = read_rows(tmp_path, prompt="p")
    assert [r.name for r in rows] == ["b", "sub/a"] and all(r.prompt == "p" for r in rows)
    assert rows[0].inputs[0].direction == (0.0, 0.0, 90.0)
    s = parse_input_spec("x@-60,10")
    assert (s.yaw, s.pitch, s.fov) == (-60.0, 10.0, 90.0)
    for bad in ("x@1", "x@a,b,c", "x@0,0,190", "@0,0,90"):
        with pytest.raises(ValueError):
            parse_input_spec(bad)
    assert parse_size("32x64") == (32, 64) and parse_size(None) is None
    with pytest.raises(ValueError, match="2:1"):
        parse_size("32x60")
