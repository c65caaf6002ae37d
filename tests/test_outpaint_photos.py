"""``opama outpaint`` with real photos: EXIF orientation, photos larger than the canvas, alpha, ``@`` in
file names, a bad batch row, and usage errors answered before torch is imported."""

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_outpaint import FAST, runner

pytestmark = pytest.mark.usefixtures("one_thread_module")

from opama_tools.cli import app


def outputs(folder):
    pano = np.asarray(Image.open(folder / "pano.png"))
    mask = np.asarray(Image.open(folder / "input_mask.png")) > 0
    return pano, mask


def outpaint(*args):
    res = runner.invoke(app, ["outpaint", *FAST, *args])
    assert res.exit_code == 0, res.output
    return res


def test_exif_rotated_phone_photo_is_pasted_upright(tmp_path):
    stored = (np.random.RandomState(0).rand(48, 64, 3) * 255).astype(np.uint8)  # as the sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=90, exif=exif)
    with Image.open(tmp_path / "phone.jpg") as im:  # the same decoded bytes, turned upright, lossless
        upright = np.rot90(np.asarray(im.convert("RGB")), k=-1)
    assert upright.shape == (64, 48, 3)
    Image.fromarray(np.ascontiguousarray(upright)).save(tmp_path / "upright.png")
    outpaint("--input", str(tmp_path / "phone.jpg"), "--out", str(tmp_path / "a"))
    outpaint("--input", str(tmp_path / "upright.png"), "--out", str(tmp_path / "b"))
    pano_a, mask_a = outputs(tmp_path / "a")
    pano_b, mask_b = outputs(tmp_path / "b")
    assert mask_a.any() and np.array_equal(mask_a, mask_b) and np.array_equal(pano_a, pano_b)
    # the footprint is taller than wide (a portrait photo), not the sideways landscape one
    rows, cols = np.nonzero(mask_a)
    assert rows.max() - rows.min() > cols.max() - cols.min()


def test_photo_larger_than_the_canvas_is_resampled(tmp_path):
    h, w = 3024, 4032  # a 12 MP phone photo at a 64x128 canvas: left half red, right half blue
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (220, 20, 20)
    a[:, w // 2:] = (20, 20, 220)
    Image.fromarray(a).save(tmp_path / "big.jpg", quality=95)
    outpaint("--input", f"{tmp_path / 'big.jpg'}@0,0,60", "--out", str(tmp_path / "o"))
    pano, mask = outputs(tmp_path / "o")
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["inputs"][0]["fov"] == 60.0
    r = 32  # the horizon row; yaw 0 is column 64
    assert mask[r, 64 - 8:64 + 8].all() and not mask[:, :32].any()
    left, right = pano[r, 64 - 8:64 - 2].astype(int), pano[r, 64 + 2:64 + 8].astype(int)
    assert (np.abs(left - (220, 20, 20)) <= 3).all() and (np.abs(right - (20, 20, 220)) <= 3).all()


def test_transparent_pixels_are_regenerated_opaque_ones_exact(tmp_path):
    rgb = (np.random.RandomState(1).rand(64, 64, 3) * 255).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 255, np.uint8)], -1)
    rgba[:, 36:, 3] = 0  # the user erased the right part: regenerate it
    rgba[:, 36:, :3] = (255, 0, 255)  # what the erased pixels hold must not leak
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    outpaint("--input", str(tmp_path / "rgb.png"), "--out", str(tmp_path / "rgb"))
    outpaint("--input", str(tmp_path / "rgba.png"), "--out", str(tmp_path / "rgba"))
    pano_o, mask_o = outputs(tmp_path / "rgb")
    pano_t, mask_t = outputs(tmp_path / "rgba")
    assert (mask_t <= mask_o).all() and mask_t.sum() < mask_o.sum()
    assert not mask_t[32, 64 + 2:64 + 16].any() and mask_o[32, 64 + 2:64 + 16].all()  # input_mask says unknown
    assert np.array_equal(pano_t[mask_t], pano_o[mask_t])  # opaque pixels bit-identical
    assert not (pano_t[~mask_t] == (255, 0, 255)).all(axis=-1).any()


def test_at_sign_in_file_names(tmp_path):
    from opama_tools.outpaint import parse_input_spec

    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "shot@2x.png")
    s = parse_input_spec(str(tmp_path / "shot@2x.png"))  # exists as given: the whole text is the path
    assert s.path == tmp_path / "shot@2x.png" and s.direction == (0.0, 0.0, 90.0)
    s = parse_input_spec(f"{tmp_path / 'shot@2x.png'}@30,5")  # split at the last '@'
    assert s.path == tmp_path / "shot@2x.png" and s.direction == (30.0, 5.0, 90.0)
    s = parse_input_spec("shot@2x.png@-10,0,60", base=tmp_path)
    assert s.path == tmp_path / "shot@2x.png" and s.direction == (-10.0, 0.0, 60.0)
    with pytest.raises(ValueError, match="after the last '@' is not yaw,pitch"):
        parse_input_spec(str(tmp_path / "missing@home.png"))
    res = runner.invoke(app, ["outpaint", *FAST, "--input", str(tmp_path / "nope@3x.png"), "--out",
                              str(tmp_path / "x")])
    assert res.exit_code == 2 and "nope@3x.png" in res.output and "after the last '@'" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    outpaint("--input", f"{tmp_path / 'shot@2x.png'}@30,0", "--out", str(tmp_path / "o"))
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["inputs"][0]["path"].endswith("shot@2x.png") and meta["inputs"][0]["yaw"] == 30.0


def test_bad_direction_row_fails_alone(tmp_path):
    Image.fromarray((np.random.RandomState(2).rand(64, 64, 3) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt", "yaw", "pitch", "fov", "name"])
        w.writerow(["a.png", "a hall", "30", "0", "90", "first"])
        w.writerow(["a.png", "a hall", "0", "95", "90", "tilted"])  # pitch out of range
        w.writerow(["a.png@0,0,200", "", "", "", "", "wide"])  # fov out of range
        w.writerow(["", "a desert", "", "", "", "text_only"])
    out = tmp_path / "out"
    res = runner.invoke(app, ["outpaint", *FAST, "--batch", str(tmp_path / "rows.csv"), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "2 done, 0 skipped, 2 failed" in res.output
    lines = res.output.strip().splitlines()
    bad = [ln for ln in lines if ln.startswith("failed")]
    assert len(bad) == 2 and "tilted" in bad[0] and "row 3" in bad[0] and "pitch" in bad[0]
    assert "wide" in bad[1] and "row 4" in bad[1] and "fov" in bad[1]
    assert lines.index(bad[0]) > max(i for i, ln in enumerate(lines) if "outpaint" in ln and "━" in ln)
    assert (out / "first" / "meta.json").is_file() and (out / "text_only" / "meta.json").is_file()
    assert not (out / "tilted").exists() and not (out / "wide").exists()


def test_usage_error_is_quick_and_imports_no_torch(tmp_path):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "opama_tools.cli", "outpaint", "--preset", "tiny", "--size", "100x100",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "--size 100x100" in p.stderr and "2:1" in p.stderr
    assert seconds < 5.0, seconds  # ~0.5 s; importing torch alone takes longer on the same machine
    # the same checks, in one process: none of them imports torch or diffusers
    (tmp_path / "v.png").write_bytes(b"not an image")
    cases = [
        ["--preset", "tiny", "--size", "64x100"],
        ["--preset", "tiny", "--input", str(tmp_path / "missing.png")],
        ["--preset", "tiny", "--input", str(tmp_path / "v.png")],
        ["--preset", "tiny", "--input", "x@a,b"],
        ["--preset", "tiny", "--input", "x@0,95,90"],
        ["--preset", "tiny", "--input", "x", "--batch", str(tmp_path)],
        ["--preset", "tiny", "--device", "gpu"],
        ["--preset", "tiny", "--dtype", "fp64"],
        ["--preset", "tiny", "--steps", "0"],
        ["--preset", "tiny", "--cube", "1"],
        ["--preset", "tiny", "--views", "0,95"],
        ["--preset", "tiny", "--views", "ring9"],
        ["--model", str(tmp_path / "no_model")],
        ["--preset", "tiny", "--model", str(tmp_path)],
        ["--preset", "tiny", "--batch", str(tmp_path / "none.csv")],
    ]
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from opama_tools.cli import app\n"
        "codes = [CliRunner().invoke(app, ['outpaint', *c, '--out', sys.argv[2]]).exit_code\n"
        "         for c in json.loads(sys.argv[1])]\n"
        "print(json.dumps([codes, sorted(m for m in ('torch', 'diffusers') if m in sys.modules)]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code, json.dumps(cases), str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=300)
    codes, heavy = json.loads(p.stdout.strip().splitlines()[-1])
    assert codes == [2] * len(cases) and heavy == [], (codes, heavy, p.stderr[-2000:])
    assert not (tmp_path / "o").exists()


def test_run_outpaint_is_the_library_entry_point(tmp_path):
    from opama_tools.outpaint import OutpaintError, run_outpaint

    Image.fromarray(np.full((40, 30, 3), 120, np.uint8)).save(tmp_path / "v.png")
    kw = dict(preset="tiny", size=(64, 128), steps=1, views="0,25", prompt="a room")
    s = run_outpaint(tmp_path / "o", inputs=[f"{tmp_path / 'v.png'}@10,0,70"], **kw)
    assert s.single and len(s.done) == 1 and not s.failed and (tmp_path / "o" / "meta.json").is_file()
    assert run_outpaint(tmp_path / "o", inputs=[f"{tmp_path / 'v.png'}@10,0,70"], **kw).skipped  # done already
    with pytest.raises(OutpaintError, match="2:1"):
        run_outpaint(tmp_path / "p", **{**kw, "size": (64, 100)})
    with pytest.raises(OutpaintError, match="scheduler"):
        run_outpaint(tmp_path / "p", **kw, scheduler="nope")
    assert not (tmp_path / "p").exists()
