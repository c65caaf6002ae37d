"""The generated region scored on its own, `opama eval compare` (80 columns, best marked, names
checked), the outpaint folder layout with meta.json, the content-keyed "already done" cache and
--resize."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from test_metrics_helpers import no_weights_env, save_tiny_squeezenet, synthetic_pano8, write_pngs

from opama_tools.cli import app

runner = CliRunner()
N = 3
H = 64


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("region")
    write_pngs(d / "ref", {f"p{k}.png": synthetic_pano8(k, H) for k in range(N)})
    return d


def _mask(h: int = H) -> np.ndarray:
    from opama_tools.eval.metrics.panorama import input_coverage_mask

    return input_coverage_mask(h, 2 * h, 0.0, 0.0, 90.0, (512, 512)).numpy()


def _by_label(res) -> dict:
    return {m.label: m for m in res.metrics}


def test_generated_region_perfect_when_equal_and_bad_when_grey(refs, tmp_path):
    from opama_tools.eval.evaluate import EvalOptions, evaluate

    m_in = _mask()
    ref = {f"p{k}.png": synthetic_pano8(k, H) for k in range(N)}
    noisy_input = {}
    grey = {}
    rng = np.random.default_rng(0)
    for k, a in ref.items():
        b = a.copy()
        b[m_in] = rng.integers(0, 256, (int(m_in.sum()), 3), dtype=np.uint8)  # wrong input region only
        noisy_input[k] = b
        c = a.copy()
        c[~m_in] = 128  # generated region flat grey, input region exact
        grey[k] = c
    write_pngs(tmp_path / "noisy_input", noisy_input)
    write_pngs(tmp_path / "grey", grey)
    opts = EvalOptions(metrics=("psnr", "ssim", "region", "lpips"), bootstrap=50, device="cpu", face_size=64,
                       lpips_weights=str(save_tiny_squeezenet(tmp_path / "tiny-squeeze.safetensors")))
    same = _by_label(evaluate(refs / "ref", refs / "ref", opts))
    assert same["PSNR (generated, dB)"].value == 100.0 and same["SSIM (generated)"].value == pytest.approx(1.0, abs=1e-5)  # float32 SSIM map
    assert same["colour distance (generated)"].value == 0.0 and same["gradient distance (generated)"].value == 0.0
    assert same["LPIPS (generated)[custom:tiny-squeeze]"].value == pytest.approx(0.0, abs=1e-7)
    assert "RBL" in same["LPIPS (generated)[custom:tiny-squeeze]"].detail  # the faces the input view does not touch

    # only the input region wrong: every pixel-wise generated-region score stays perfect
    ni = _by_label(evaluate(tmp_path / "noisy_input", refs / "ref", opts))
    assert ni["PSNR (generated, dB)"].value == 100.0 and ni["colour distance (generated)"].value == 0.0
    assert ni["PSNR (input region, dB)"].value < 15

    g = _by_label(evaluate(tmp_path / "grey", refs / "ref", opts))
    assert g["PSNR (input region, dB)"].value == 100.0  # the input region is exact
    assert g["PSNR (generated, dB)"].value < 30 and g["SSIM (generated)"].value < 0.9
    assert g["colour distance (generated)"].value > 0.02 and g["gradient distance (generated)"].value > 1e-3
    assert g["LPIPS (generated)[custom:tiny-squeeze]"].value > 0.01
    for lab in ("PSNR (generated, dB)", "SSIM (generated)"):
        assert g[lab].value < same[lab].value


def test_region_distances_known_cases():
    import torch

    from opama_tools.eval.metrics.region import colour_distance, gradient_distance

    m = torch.from_numpy(~_mask())
    x = torch.rand(1, 3, H, 2 * H, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    black, white = torch.zeros_like(x), torch.ones_like(x)
    assert float(colour_distance(black, white, m)[0]) == pytest.approx(63 / 64)  # W1 of 0 vs 1, bin centres apart
    assert float(colour_distance(x, x, m)[0]) == 0.0
    assert float(gradient_distance(black, white, m)[0]) == 0.0  # both flat
    assert float(gradient_distance(x, black, m)[0]) > 0.05


def _write_outpaint_layout(root, items: dict, meta: dict):
    for name, img in items.items():
        write_pngs(root / name, {"pano.png": img})
        (root / name / "meta.json").write_text(json.dumps({**meta, "name": name}))


def test_outpaint_layout_meta_and_compare_table(refs, tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    _write_outpaint_layout(tmp_path / "opama", {f"p{k}": synthetic_pano8(k + 20, H) for k in range(N)},
                           {"method": "OPa-Ma", "model_id": "tiny-random", "procedure": "mamba-outpaint/8 steps"})
    _write_outpaint_layout(tmp_path / "copy", {f"p{k}": synthetic_pano8(k, H) for k in range(N)},
                           {"method": "Copy", "model_id": "none", "procedure": "reference"})
    for name in ("opama", "copy"):
        r = runner.invoke(app, ["eval", str(tmp_path / name), str(refs / "ref"), "--metrics", "psnr,region,ds,seam",
                                "--out", str(tmp_path / f"rep_{name}"), "--bootstrap", "20"], env={"COLUMNS": "100"})
        assert r.exit_code == 0, r.output
        assert "summary: 3 done" in r.output
    r = runner.invoke(app, ["eval", str(tmp_path / "opama"), str(refs / "ref"), "--metrics", "psnr",
                            "--out", str(tmp_path / "rep_x")], env={"COLUMNS": "200"})
    assert "scored: method OPa-Ma; model id tiny-random; procedure mamba-outpaint/8 steps (from 3 meta.json)" in r.output
    md = (tmp_path / "rep_opama" / "report.md").read_text()
    assert "method OPa-Ma; model id tiny-random" in md
    data = json.loads((tmp_path / "rep_opama" / "metrics.json").read_text())
    assert data["scored"]["method"] == "OPa-Ma" and data["pairs"] == N

    # compare: default names from meta.json, metrics as rows, 80 columns, best marked
    out = tmp_path / "table"
    c = runner.invoke(app, ["eval", "compare", str(tmp_path / "rep_opama"), str(tmp_path / "rep_copy"),
                            "--out", str(out)], env={"COLUMNS": "80"})
    assert c.exit_code == 0, c.output
    lines = [line for line in c.output.splitlines() if not line.startswith("wrote ")]  # paths are not wrapped
    assert max(len(line) for line in lines) <= 80 and any(line.startswith("┏") for line in lines)
    assert "OPa-Ma" in c.output and "Copy" in c.output
    csv = pd.read_csv(out.with_suffix(".csv"), index_col=0)
    assert list(csv.columns) == ["better", "OPa-Ma", "Copy", "best"]
    assert csv.loc["PSNR (input region, dB)", "Copy"] == 100.0
    assert csv.loc["PSNR (input region, dB)", "best"] == "Copy"
    assert csv.loc["colour distance (generated)", "best"] == "Copy"  # lower is better
    ds = csv.loc["DS"]
    want = "OPa-Ma" if abs(ds["OPa-Ma"] - 1) < abs(ds["Copy"] - 1) else "Copy"
    assert ds["best"] == want and ds["better"] == "1.0"  # closest to 1 wins
    assert csv.loc["DS (reference)", "better"] == "reference" and pd.isna(csv.loc["DS (reference)", "best"])
    md = out.with_suffix(".md").read_text()
    assert md.splitlines()[0] == "| metric | better | OPa-Ma | Copy |"
    assert "| PSNR (input region, dB) | higher | " in md and "**100**" in md
    assert any("100*" in line for line in lines)

    # --paired: each method minus the first report, panorama by panorama
    c = runner.invoke(app, ["eval", "compare", str(tmp_path / "rep_opama"), str(tmp_path / "rep_copy"),
                            "--paired", "--out", str(tmp_path / "pt")], env={"COLUMNS": "120"})
    assert c.exit_code == 0, c.output
    assert "paired: each method minus OPa-Ma" in c.output
    pr = pd.read_csv(tmp_path / "pt_paired.csv").set_index("key")
    per = pd.read_csv(tmp_path / "rep_opama" / "per_image.csv")
    row = pr.loc["gen_colour"]
    assert row["method"] == "Copy" and row["baseline"] == "OPa-Ma" and row["n"] == N and row["wins"] == N
    assert row["mean"] == pytest.approx(-per["gen_colour"].mean()) and row["ci_high"] < 0 and row["excludes_0"]
    assert "seam" not in pr.index and "ds" not in pr.index  # best at 1.0: no sign to test
    one = runner.invoke(app, ["eval", "compare", str(tmp_path / "rep_opama"), "--paired", "--out", str(tmp_path / "p1")])
    assert one.exit_code == 2 and "at least 2 reports" in one.output and "Traceback" not in one.output
    assert not list(tmp_path.glob("p1*"))  # nothing written

    bad = runner.invoke(app, ["eval", "compare", str(tmp_path / "rep_opama"), str(tmp_path / "rep_copy"),
                              "--names", "only-one", "--out", str(tmp_path / "t2")])
    assert bad.exit_code == 2 and "--names has 1 name for 2 reports" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "t2.md").exists()


def test_rerun_recomputes_when_inputs_change(refs, tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    gen = tmp_path / "gen"
    shutil.copytree(refs / "ref", gen)
    out = tmp_path / "rep"
    args = ["eval", str(gen), str(refs / "ref"), "--metrics", "psnr,seam", "--out", str(out), "--bootstrap", "20"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "3 done" in first.output
    psnr = lambda: {m["label"]: m for m in json.loads((out / "metrics.json").read_text())["metrics"]}[  # noqa: E731
        "PSNR (input region, dB)"]
    assert psnr()["value"] == 100.0
    assert "already holds this run" in runner.invoke(app, args).output  # nothing changed
    # replace the content of every generated image (same names, same sizes) and delete one
    write_pngs(gen, {f"p{k}.png": synthetic_pano8(k + 50, H) for k in range(N)})
    (gen / "p2.png").unlink()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already holds this run" not in again.output, again.output
    assert "2 done" in again.output
    assert psnr()["value"] < 40 and psnr()["n"] == 2
    # same bytes with a new mtime: still done (the job layer's content signature)
    st = os.stat(gen / "p0.png")
    os.utime(gen / "p0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "already holds this run" in runner.invoke(app, args).output
    # a different option recomputes
    assert "already holds this run" not in runner.invoke(app, args[:-1] + ["21"]).output


def test_size_mismatch_is_an_error_unless_resize(refs, tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    write_pngs(tmp_path / "half", {f"p{k}.png": synthetic_pano8(k, H // 2) for k in range(N)})
    out = tmp_path / "rep"
    r = runner.invoke(app, ["eval", str(tmp_path / "half"), str(refs / "ref"), "--metrics", "psnr", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "p0.png" in r.output and "32x64" in r.output and "64x128" in r.output and "--resize" in r.output  # HxW
    assert not out.exists()
    r = runner.invoke(app, ["eval", str(tmp_path / "half"), str(refs / "ref"), "--metrics", "psnr,ssim,region",
                            "--out", str(out), "--resize"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "--resize: 3 references resampled" in r.output
    assert "**--resize**: 3 references resampled to the generated size" in (out / "report.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["config"]["resize"] is True


def test_one_ssim_map_for_both_regions_equals_the_cropped_ones():
    import torch

    from opama_tools.eval.metrics.panorama import masked_ssim, ssim_means

    a = torch.from_numpy(synthetic_pano8(1, H)).permute(2, 0, 1)[None].float() / 255
    b = torch.from_numpy(synthetic_pano8(8, H)).permute(2, 0, 1)[None].float() / 255
    m = torch.from_numpy(_mask())
    s_in, s_gen = ssim_means(a, b, [m, ~m])
    # the bounding-box crop sees every pixel the 11x11 window reaches: float32 rounding only
    assert float(s_in[0]) == pytest.approx(float(masked_ssim(a, b, m)[0]), abs=1e-6)
    assert float(s_gen[0]) == pytest.approx(float(masked_ssim(a, b, ~m)[0]), abs=1e-6)
    assert float(s_in[0]) != pytest.approx(float(s_gen[0]), abs=1e-3)


def test_image_size_is_hw_after_exif_orientation(tmp_path):
    """The size check of eval reads sizes as the image reader decodes them: H x W, EXIF orientation applied."""
    from PIL import Image

    from opama_tools.eval.evaluate import _image_size

    im = Image.new("RGB", (40, 20))  # stored 20 high, 40 wide; orientation 6 shows it 40 high, 20 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    im.save(tmp_path / "plain.png")
    assert _image_size(tmp_path / "rot.jpg") == (40, 20)
    assert _image_size(tmp_path / "plain.png") == (20, 40)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert _image_size(tmp_path / "bad.png") is None
