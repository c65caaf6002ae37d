"""`opama demo --fast`: every stage runs through the library functions and leaves its artefacts; the
process pool names a failed run and its log, and an interrupt terminates its workers."""

import json
import multiprocessing
import time

import pytest

from typer.testing import CliRunner

from opama_tools.cli import app

runner = CliRunner()


def test_demo_fast_every_stage(tmp_path):
    d = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--fast", "--out", str(d)])
    assert res.exit_code == 0, res.output
    # 1-4: data, prepare, captions, inputs
    assert len(list((d / "exr" / "train").glob("*.exr"))) == 4 and len(list((d / "exr" / "test").glob("*.exr"))) == 2
    tests = sorted(p.stem for p in (d / "png" / "test").glob("*.png"))
    assert len(tests) == 2 and (d / "png" / "train" / "manifest.csv").is_file()
    assert json.loads((d / "captions" / "test.jsonl").read_text().splitlines()[0])["caption"]
    assert (d / "inputs" / "batch.csv").is_file() and len(list((d / "inputs").glob("*.png"))) == 2
    # 5: a trained model folder that outpaint reads
    info = json.loads((d / "runs" / "opama" / "model" / "opama_model.json").read_text())
    assert info["preset"] == "tiny" and "unet" in info["trained"] and (d / "runs" / "opama" / "log.csv").is_file()
    assert info["training"]["unet_warmup_context"] == "text"
    # ... and its backbone exported as a diffusers inpainting folder (the training-free method's checkpoint)
    index = json.loads((d / "runs" / "opama" / "sd-inpaint" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    # 6: trained, training-free and untrained outpainting, and the baseline
    free = json.loads((d / "gen" / "training-free-fast" / tests[0] / "meta.json").read_text())
    assert free["method"] == "sd-inpaint" and free["procedure"] == "fast"
    assert free["model_id"] == f"dir:{(d / 'runs' / 'opama' / 'sd-inpaint').resolve()}"
    trained = json.loads((d / "gen" / "trained-fast" / tests[0] / "meta.json").read_text())
    assert (free["seed"], free["steps"], free["size"]) == (trained["seed"], trained["steps"], trained["size"])
    for name in ("trained-fast", "training-free-fast", "untrained-fast"):
        for stem in tests:
            f = d / "gen" / name / stem
            assert (f / "pano.png").is_file() and (f / "index.html").is_file(), f
            assert json.loads((f / "meta.json").read_text())["unet_passes"] > 0
    assert len(list((d / "gen" / "input-only").glob("*.png"))) == 2
    # 7: reports and the side-by-side table filled with numbers
    for name in ("input-only", "trained-fast", "training-free-fast", "untrained-fast"):
        m = {x["label"]: x for x in json.loads((d / "reports" / name / "metrics.json").read_text())["metrics"]}
        assert m["seam"]["status"] == "ok" and isinstance(m["seam"]["value"], float)
    table = (d / "reports" / "compare.csv").read_text().splitlines()
    assert table[0].split(",")[2:6] == ["input-only", "trained-fast", "training-free-fast", "untrained-fast"]
    seam = next(r for r in table if r.startswith("seam,")).split(",")
    assert all(float(v) > 0 for v in seam[2:6])
    # 8: the page
    page = (d / "report.html").read_text()
    assert "Comparison on the held-out test panoramas" in page and "trained-fast" in page
    assert "gen/trained-fast/" in page and "loss.png" in page
    # the overview: 2 test panoramas by 5 columns (input, trained, training-free, untrained, reference)
    from opama_tools.images import read_ldr

    assert "report_assets/overview.png" in page
    ov = read_ldr(d / "report_assets" / "overview.png")
    assert ov.shape[1] > 2.5 * ov.shape[0] and ov.std() > 20, ov.shape
    # the paired rows: trained-fast minus each baseline and minus the training-free method, the training-free
    # method minus grey, per weight-free metric, n = the 2 test panoramas
    assert "Paired, panorama by panorama" in page
    for a, b in (("trained-fast", "input-only"), ("trained-fast", "untrained-fast"),
                 ("trained-fast", "training-free-fast"), ("training-free-fast", "input-only")):
        assert f"<td>{a}</td><td>{b}</td><td>colour distance (generated)</td>" in page
    assert page.count(" of 2</td>") == 16
    verdict = page.split("<h2>Verdict</h2>")[1].split("<h2>")[0]
    assert "trained-fast vs training-free-fast: colour distance (generated) paired difference" in verdict
    assert "SD-inpaint (no conditioner)" in page and "weak evidence" in verdict
    stages = json.loads((d / "stages.json").read_text())["seconds"]
    assert {"data", "prepare", "caption", "inputs", "train", "outpaint", "eval", "report"} <= set(stages)
    # a re-run resumes: nothing is recomputed, the same page comes back
    before = (d / "gen" / "trained-fast" / tests[0] / "meta.json").stat().st_mtime_ns
    res = runner.invoke(app, ["demo", "--fast", "--out", str(d)])
    assert res.exit_code == 0, res.output
    assert (d / "gen" / "trained-fast" / tests[0] / "meta.json").stat().st_mtime_ns == before
    # other settings start afresh: no stale panorama from the first run survives
    res = runner.invoke(app, ["demo", "--fast", "--n-test", "1", "--out", str(d)])
    assert res.exit_code == 0, res.output
    assert len(list((d / "png" / "test").glob("*.png"))) == 1
    assert len(list((d / "gen" / "trained-fast").glob("*/pano.png"))) == 1
    # --video adds the video stage on the same trained model: temporal vs per-frame, scored, on the page
    assert not (d / "video").exists() and "video" not in stages
    res = runner.invoke(app, ["demo", "--fast", "--n-test", "1", "--video", "--out", str(d)])
    assert res.exit_code == 0, res.output
    assert "video" in json.loads((d / "stages.json").read_text())["seconds"]
    clip = next((d / "video" / "data" / "refs").glob("*.mkv")).stem
    metas = {m: json.loads((d / "video" / "gen" / m / clip / "meta.json").read_text()) for m in ("temporal", "per-frame")}
    assert metas["temporal"]["video"]["mean_pass_ratio_after_first"] <= 0.15
    assert metas["per-frame"]["video"]["temporal"]["independent"] is True
    assert (d / "video" / "gen" / "temporal" / clip / "pano.mkv").is_file()
    flicker = {m: next(x["value"] for x in json.loads((d / "video" / "reports" / m / "metrics.json").read_text())["metrics"]
                       if x["key"] == "flicker") for m in metas}
    assert flicker["temporal"] < flicker["per-frame"], flicker
    table = (d / "video" / "results.md").read_text().splitlines()
    assert [r.split("|")[1].strip() for r in table[2:]] == ["temporal", "per-frame"]
    page = (d / "report.html").read_text()
    assert "360° video: temporal vs per frame" in page and f"video/gen/temporal/{clip}/index.html" in page


def test_demo_out_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    res = runner.invoke(app, ["demo", "--fast", "--out", str(f)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert str(f) in res.output and len(res.output.strip().splitlines()) == 1


def test_pool_failure_names_the_run_and_its_log(tmp_path):
    from opama_tools.demo.run import DemoError, _outpaint_job, _run_pool

    log = tmp_path / "broken.log"
    job = (str(log), str(tmp_path / "missing.csv"), str(tmp_path / "gen"), None, {"procedure": "fast"})
    with pytest.raises(DemoError) as e:
        _run_pool([("broken", _outpaint_job, job)], workers=1, threads=1, on_message=lambda m: None,
                  logs={"broken": log})
    assert str(e.value).startswith("broken: ") and "missing.csv" in str(e.value)
    assert str(e.value).endswith(f"(see {log})") and len(str(e.value).splitlines()) == 1
    assert "missing.csv" in log.read_text()  # the run's own output and traceback went to its log
    assert not (tmp_path / "gen").exists()


def test_pool_interrupt_terminates_the_workers():
    from opama_tools.demo.run import _run_pool

    started = time.monotonic()

    def tick(running):
        if running:  # the workers are busy sleeping: interrupt, as Ctrl-C would
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run_pool([(f"sleep{k}", time.sleep, (120,)) for k in range(2)], workers=2, threads=0,
                  on_message=lambda m: None, on_tick=tick)
    assert time.monotonic() - started < 60
    assert not multiprocessing.active_children()
