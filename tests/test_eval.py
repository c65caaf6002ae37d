"""`opama eval` end to end on synthetic panoramas: weights missing, the real sentence model,
tiny networks through the weight flags, the report files and `opama eval compare`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from test_metrics_helpers import (
    no_weights_env,
    save_tiny_hf_clip,
    save_tiny_inception,
    save_tiny_open_clip,
    save_tiny_squeezenet,
    synthetic_pano8,
    write_pngs,
)

from opama_tools.cli import app

runner = CliRunner()
N = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata")
    from opama_tools.data.synthetic import make_scene

    refs = {f"scene/p{k}.png": synthetic_pano8(k, 64) for k in range(N)}
    gens = {f"scene/p{k}.png": synthetic_pano8(k + 40, 64) for k in range(N)}
    gens["extra_only_in_gen.png"] = synthetic_pano8(99, 64)
    write_pngs(d / "ref", refs)
    write_pngs(d / "gen", gens)
    caps = [{"image": f"scene/p{k}.png", "caption": make_scene(k).description} for k in range(N)]
    (d / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
    gcaps = [{"image": f"scene/p{k}.png", "caption": make_scene(k + 40).description} for k in range(N)]
    gcaps[0]["caption"] = caps[0]["caption"]  # one generated caption identical to its reference
    (d / "gen_captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in gcaps))
    return d


def _metrics(out) -> dict:
    return {m["label"]: m for m in json.loads((out / "metrics.json").read_text())["metrics"]}


def test_all_weights_missing_weight_free_metrics_run(data, tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    out = tmp_path / "rep"
    res = runner.invoke(app, ["eval", str(data / "gen"), str(data / "ref"), "--captions", str(data / "captions.jsonl"),
                              "--out", str(out), "--bootstrap", "200", "--set-bootstrap", "0"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for f in ("metrics.json", "per_image.csv", "report.md", "report.html", "samples.png", "per_image.png"):
        assert (out / f).is_file(), f
    m = _metrics(out)
    for label in ("seam", "seam (reference)", "pole variance", "PSNR (input region, dB)", "SSIM (input region)"):
        assert m[label]["status"] == "ok" and np.isfinite(m[label]["value"])
        assert m[label]["ci_low"] <= m[label]["value"] <= m[label]["ci_high"]
    for label, hint in (("FID[clip_vit_b_32]", "ViT-B-32.pt"), ("FID[inception]", "inception-2015-12-05.pt"),
                        ("KID[inception]", "--inception-weights"), ("IS[inception]", "OPAMA_INCEPTION"),
                        ("OmniFID[clip_vit_b_32]", "--fid-clip-weights"), ("FID-h[inception]", "inception"),
                        ("LPIPS[squeezenet1_1]", "squeezenet1_1-b8a52dc0.pth"),
                        ("CLIP[clip-vit-base-patch16]", "openai/clip-vit-base-patch16"), ("SC", "sentence")):
        assert m[label]["status"] == "unavailable", label
        assert hint in m[label]["detail"], (label, m[label]["detail"])
        assert label not in res.output  # the table shows what ran; one line counts the rest
        assert label in (out / "report.md").read_text().split("## What the missing metrics need")[1]
    n_missing = sum(1 for v in m.values() if v["status"] == "unavailable" and "--captions" not in v["detail"])
    assert f"{n_missing} learned metrics need weights: `opama doctor`" in res.output
    assert n_missing == 17  # LPIPS x2, FID/KID/OmniFID/OmniFID-pano/FID-h x 2 networks, IS, FAED, CLIP x2, SC
    assert "ViT-B-32.pt" not in res.output
    assert "extra_only_in_gen.png" in res.output and "extra_only_in_gen.png" in (out / "report.md").read_text()
    df = pd.read_csv(out / "per_image.csv")
    assert len(df) == N and {"seam", "pole", "psnr", "ssim"} <= set(df.columns)
    assert "summary: 4 done, 0 skipped, 0 failed" in res.output
    for label in ("DS", "DS (reference)", "PSNR (generated, dB)", "colour distance (generated)"):
        assert m[label]["status"] == "ok" and label in res.output
    # same run again: skipped
    again = runner.invoke(app, ["eval", str(data / "gen"), str(data / "ref"), "--captions", str(data / "captions.jsonl"),
                                "--out", str(out), "--bootstrap", "200", "--set-bootstrap", "0"])
    assert again.exit_code == 0 and "skipped" in again.output


def test_only_learned_metrics_and_none_available_exits_2(data, tmp_path, monkeypatch):
    """No requested metric can run: one line naming every missing file and where it is looked for."""
    no_weights_env(monkeypatch, tmp_path)
    res = runner.invoke(app, ["eval", str(data / "gen"), str(data / "ref"), "--metrics", "fid,lpips",
                              "--out", str(tmp_path / "r")], env={"COLUMNS": "80"})
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no requested metric can run" in lines[0], res.output
    from opama_tools.weights import component

    for key, name in (("inception", "inception-2015-12-05.pt"), ("fid-clip", "ViT-B-32.pt"),
                      ("lpips", "squeezenet1_1-b8a52dc0.pth")):
        assert component(key).cache_hint() in lines[0] and name in lines[0], key
        assert component(key).flag in lines[0] and component(key).env in lines[0], key
    assert "summary" not in res.output and not (tmp_path / "r").exists()


def test_sc_with_the_installed_sentence_model(data, tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path, keep_sentence=True)
    out = tmp_path / "rep"
    res = runner.invoke(app, ["eval", str(data / "gen"), str(data / "ref"), "--captions", str(data / "captions.jsonl"),
                              "--gen-captions", str(data / "gen_captions.jsonl"), "--metrics", "sc,seam",
                              "--out", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    m = _metrics(out)
    sc = m["SC[all-MiniLM-L6-v2]"]
    assert sc["status"] == "ok" and sc["network"] == "all-MiniLM-L6-v2" and sc["n"] == N
    assert "SC[all-MiniLM-L6-v2]" in res.output and "all-mpnet-base-v2]" not in json.dumps(m)
    df = pd.read_csv(out / "per_image.csv")
    col = df["sc[all-MiniLM-L6-v2]"]
    assert col.iloc[0] == pytest.approx(1.0, abs=1e-5)  # identical captions
    assert (col.iloc[1:] < 0.999).all() and (col > -1).all()


def test_tiny_networks_identical_and_different_sets(data, tmp_path):
    from opama_tools.eval.evaluate import EvalOptions, evaluate

    nets = tmp_path / "nets"
    opts = dict(
        inception_weights=str(save_tiny_inception(tmp_path / "tiny-inception.pt")),
        fid_clip_weights=str(save_tiny_open_clip(nets / "tiny-open-clip")),
        clip_weights=str(save_tiny_hf_clip(nets / "tiny-hf-clip")),
        lpips_weights=str(save_tiny_squeezenet(tmp_path / "tiny-squeeze.safetensors")),
        captions=str(data / "captions.jsonl"), face_size=64, bootstrap=100, set_bootstrap=5, kid_subsets=5,
        metrics=("fid", "kid", "is", "omnifid", "fidh", "clip", "lpips", "psnr", "seam", "region"), device="cpu",
    )
    same = evaluate(data / "ref", data / "ref", EvalOptions(**opts))
    m = {r.label: r for r in same.metrics}
    assert m["LPIPS (generated)[custom:tiny-squeeze]"].value == pytest.approx(0.0, abs=1e-7)
    for fam in ("FID", "OmniFID", "OmniFID-pano", "FID-h"):
        for net in ("custom:tiny-open-clip", "custom:tiny-inception"):
            r = m[f"{fam}[{net}]"]
            assert r.status == "ok" and abs(r.value) < 1e-6, (fam, net, r)
    assert abs(m["KID[custom:tiny-inception]"].value) < 0.05
    assert m["LPIPS[custom:tiny-squeeze]"].value == pytest.approx(0.0, abs=1e-7)
    assert m["PSNR (input region, dB)"].value == 100.0
    assert m["IS[custom:tiny-inception]"].value >= 1.0
    assert 0 <= m["CLIP[custom:tiny-hf-clip]"].value <= 100 and m["CLIP-NFoV[custom:tiny-hf-clip]"].status == "ok"
    diff = evaluate(data / "gen", data / "ref", EvalOptions(**opts))
    d = {r.label: r for r in diff.metrics}
    assert d["FID[custom:tiny-inception]"].value > 1e-3
    assert d["LPIPS[custom:tiny-squeeze]"].value > 0.01
    assert d["PSNR (input region, dB)"].value < 40
    assert diff.gen_only == ["extra_only_in_gen.png"]

    from opama_tools.eval.report import write_report

    write_report(same, tmp_path / "same")
    write_report(diff, tmp_path / "diff")
    res = runner.invoke(app, ["eval", "compare", str(tmp_path / "same"), str(tmp_path / "diff"),
                              "--names", "identical,different", "--out", str(tmp_path / "table")], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    md = (tmp_path / "table.md").read_text()
    assert "identical" in md and "FID[custom:tiny-inception]" in md
    csv = pd.read_csv(tmp_path / "table.csv", index_col=0)
    assert csv.loc["PSNR (input region, dB)", "identical"] == 100.0
    assert csv.loc["FID[custom:tiny-inception]", "different"] > 0
    assert csv.loc["FID[custom:tiny-inception]", "best"] == "identical"
    assert csv.loc["PSNR (input region, dB)", "best"] == "identical"
    # OmniFID pooled per face vs features averaged per panorama: different numbers
    assert d["OmniFID[custom:tiny-inception]"].value != pytest.approx(d["OmniFID-pano[custom:tiny-inception]"].value)


def test_bad_image_is_reported_and_does_not_stop(data, tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    import shutil

    gen = tmp_path / "gen"
    shutil.copytree(data / "gen", gen)
    (gen / "scene" / "p1.png").write_bytes(b"not a png")
    out = tmp_path / "rep"
    res = runner.invoke(app, ["eval", str(gen), str(data / "ref"), "--metrics", "seam,pole", "--out", str(out)])
    assert res.exit_code == 1
    assert "p1.png" in res.output and "3 done, 0 skipped, 1 failed" in res.output
    assert len(pd.read_csv(out / "per_image.csv")) == N - 1
    assert json.loads((out / "metrics.json").read_text())["failed"][0]["path"].endswith("p1.png")


def test_sc_captions_generated_panoramas_with_a_local_blip(data, tmp_path, monkeypatch):
    """Without --gen-captions, SC captions the generated panoramas with the BLIP `opama caption` loads."""
    from test_caption import _blip_dir

    no_weights_env(monkeypatch, tmp_path, keep_sentence=True)
    blip = _blip_dir(tmp_path / "models")
    out = tmp_path / "rep"
    res = runner.invoke(app, ["eval", str(data / "gen"), str(data / "ref"), "--captions", str(data / "captions.jsonl"),
                              "--captioner", str(blip), "--metrics", "sc", "--out", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    sc = _metrics(out)["SC[all-MiniLM-L6-v2]"]
    assert sc["status"] == "ok" and sc["n"] == N
    df = pd.read_csv(out / "per_image.csv")
    assert df["gen_caption"].notna().all()


def test_fmt_honours_its_digits():
    from opama_tools.eval.report import fmt

    assert fmt(0.0123456) == "0.01235" and fmt(0.0123456, 3) == "0.0123" and fmt(-0.001701, 2) == "-0.0017"
    assert fmt(12345.67, 3) == "12345.7" and fmt(None) == "—" and fmt(float("nan")) == "—" and fmt(float("inf")) == "inf"
