"""`run_eval` / `run_compare` (the library behind `opama eval`), the metric registry, and the
user-input bugs: the outpaint layout's side files, a negative seed, a missing weight file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from test_metrics_helpers import no_weights_env, synthetic_pano8, write_pngs

from opama_tools.cli import app
from opama_tools.eval import registry
from opama_tools.eval.evaluate import EvalInputError, EvalOptions
from opama_tools.eval.run import finished_run, run_compare, run_eval

runner = CliRunner()
H = 32


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    no_weights_env(monkeypatch, tmp_path)
    write_pngs(tmp_path / "ref", {f"p{k}.png": synthetic_pano8(k, H) for k in range(3)})
    write_pngs(tmp_path / "gen", {f"p{k}.png": synthetic_pano8(k + 20, H) for k in range(3)})
    return tmp_path


def _opts(**kw) -> EvalOptions:
    return EvalOptions(**{"metrics": ("seam", "region", "psnr"), "bootstrap": 20, "input_size": 32, **kw})


def _one_line_error(res, culprit: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and culprit in lines[0], res.output


def test_run_eval_writes_then_skips_then_overwrites(folders):
    out = folders / "rep"
    first = run_eval(folders / "gen", folders / "ref", out, _opts())
    assert not first.skipped and first.done == 3 and first.failed == 0 and first.exit_code == 0
    assert {p.name for p in first.written} >= {"metrics.json", "per_image.csv", "report.md", "report.html"}
    stamp = (out / "metrics.json").stat().st_mtime_ns
    rec = json.loads((out / "metrics.json").read_text())
    assert finished_run(out, rec["source"], rec["settings"]) and not finished_run(out, rec["source"], "other")
    assert len(rec["source"]) == 64 and len(rec["settings"]) == 16  # the job layer's signature and key

    again = run_eval(folders / "gen", folders / "ref", out, _opts())  # the Python API skips too
    assert again.skipped and again.result is None and again.written == [] and again.exit_code == 0
    assert (out / "metrics.json").stat().st_mtime_ns == stamp

    (folders / "gen" / "p0.png").touch()  # same bytes: still done
    assert run_eval(folders / "gen", folders / "ref", out, _opts()).skipped
    (out / "report.html").unlink()  # a report file missing: redone
    assert not run_eval(folders / "gen", folders / "ref", out, _opts()).skipped
    write_pngs(folders / "gen", {"p0.png": synthetic_pano8(7, H)})  # other bytes: redone
    assert not run_eval(folders / "gen", folders / "ref", out, _opts()).skipped

    other = run_eval(folders / "gen", folders / "ref", out, _opts(seed=1))  # other options: recomputed
    assert not other.skipped and other.result.config["seed"] == 1
    forced = run_eval(folders / "gen", folders / "ref", out, _opts(seed=1), overwrite=True)
    assert not forced.skipped
    # the CLI sees the library's record: same run, skipped
    res = runner.invoke(app, ["eval", str(folders / "gen"), str(folders / "ref"), "--metrics", "seam,region,psnr",
                              "--bootstrap", "20", "--input-size", "32", "--seed", "1", "--out", str(out)])
    assert res.exit_code == 0 and "0 done, 1 skipped" in res.output, res.output


@pytest.mark.parametrize("kw,culprit", [
    (dict(seed=-1), "--seed"),
    (dict(clip_weights="/nonexistent/clip"), "--clip-weights /nonexistent/clip"),
    (dict(captions="/nonexistent/caps.jsonl"), "/nonexistent/caps.jsonl"),
    (dict(metrics=("fid", "clip")), "no requested metric can run"),
])
def test_run_eval_input_errors_write_nothing(folders, kw, culprit):
    out = folders / "rep"
    with pytest.raises(EvalInputError, match=culprit.replace(".", r"\.")):
        run_eval(folders / "gen", folders / "ref", out, _opts(**kw))
    assert not out.exists()


def test_negative_seed_is_one_line(folders):
    out = folders / "rep"
    res = runner.invoke(app, ["eval", str(folders / "gen"), str(folders / "ref"), "--seed", "-1", "--out", str(out)])
    _one_line_error(res, "--seed")
    assert not out.exists()
    run_eval(folders / "gen", folders / "ref", out, _opts())
    res = runner.invoke(app, ["eval", "compare", str(out), str(out), "--names", "a,b", "--paired", "--seed", "-1",
                              "--out", str(folders / "table")])
    _one_line_error(res, "--seed")
    assert not list(folders.glob("table*"))


def test_every_pair_unreadable_exits_1_naming_the_files(folders):
    for k in range(3):
        (folders / "gen" / f"p{k}.png").write_bytes(b"not a png")
    out = folders / "rep"
    res = runner.invoke(app, ["eval", str(folders / "gen"), str(folders / "ref"), "--metrics", "seam",
                              "--out", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert sum(ln.startswith("failed: ") for ln in res.output.splitlines()) == 3
    assert "0 done, 0 skipped, 3 failed" in res.output
    assert "no metric could run: 3 files could not be read (listed above)" in res.output
    s = run_eval(folders / "gen", folders / "ref", folders / "rep2", _opts())
    assert s.failed == 3 and s.done == 0 and s.exit_code == 1


def test_missing_weight_file_is_one_line_even_without_captions(folders):
    out = folders / "rep"
    res = runner.invoke(app, ["eval", str(folders / "gen"), str(folders / "ref"), "--clip-weights", "/nonexistent",
                              "--out", str(out)])
    _one_line_error(res, "--clip-weights /nonexistent")
    assert not out.exists()


def test_fid_clip_without_weights_names_the_files(folders):
    out = folders / "rep"
    res = runner.invoke(app, ["eval", str(folders / "gen"), str(folders / "ref"), "--metrics", "fid,clip",
                              "--out", str(out)], env={"COLUMNS": "80"})
    _one_line_error(res, "no requested metric can run")
    assert "ViT-B-32.pt" in res.output and "inception-2015-12-05.pt" in res.output
    assert "--captions" in res.output and "summary" not in res.output and not out.exists()
    caps = folders / "caps.jsonl"
    caps.write_text("".join(json.dumps({"image": f"p{k}.png", "caption": "a room"}) + "\n" for k in range(3)))
    res = runner.invoke(app, ["eval", str(folders / "gen"), str(folders / "ref"), "--metrics", "fid,clip",
                              "--captions", str(caps), "--out", str(out)], env={"COLUMNS": "80"})
    _one_line_error(res, "no requested metric can run")
    assert "openai/clip-vit-base-patch16" in res.output and "--clip-weights" in res.output and not out.exists()


def test_eval_reads_the_layout_outpaint_writes(folders):
    """NAME/pano.png + input_mask.png + meta.json + index.html + cube faces: only pano.png is a panorama."""
    gen = folders / "outpainted"
    for k in range(3):
        d = gen / f"p{k}"
        write_pngs(d, {"pano.png": synthetic_pano8(k + 20, H), "input_mask.png": np.zeros((H, 2 * H), np.uint8),
                       **{f"cube_{f}.png": synthetic_pano8(k, 8)[:, :8] for f in "FRBLUD"}})
        (d / "meta.json").write_text(json.dumps({"method": "opama", "procedure": "fast"}))
        (d / "index.html").write_text("<html></html>")
    out = folders / "rep"
    s = run_eval(gen, folders / "ref", out, _opts())
    assert s.result.gen_only == [] and s.result.ref_only == [] and s.done == 3
    assert s.result.scored["method"] == "opama"
    flat = run_eval(folders / "gen", folders / "ref", folders / "rep_flat", _opts())
    pd.testing.assert_frame_equal(s.result.per_image, flat.result.per_image)  # same panoramas, same numbers
    res = runner.invoke(app, ["eval", str(gen), str(folders / "ref"), "--metrics", "seam", "--out",
                              str(folders / "rep2")])
    assert res.exit_code == 0 and "unpaired" not in res.output and "input_mask" not in res.output, res.output
    # outside a result folder an image of that name is still a panorama
    write_pngs(folders / "loose", {"input_mask.png": synthetic_pano8(1, H), "p0.png": synthetic_pano8(0, H)})
    loose = run_eval(folders / "loose", folders / "ref", folders / "rep3", _opts())
    assert loose.result.gen_only == ["input_mask.png"]


def test_run_compare_writes_the_paired_csv(folders):
    a = run_eval(folders / "ref", folders / "ref", folders / "same", _opts()).out_dir
    b = run_eval(folders / "gen", folders / "ref", folders / "diff", _opts()).out_dir
    s = run_compare([b, a], folders / "table", ["diff", "same"], paired=True, bootstrap=50)
    assert [p.name for p in s.written] == ["table.md", "table.csv", "table_paired.csv"]
    df = pd.read_csv(folders / "table_paired.csv")
    row = df.set_index("key").loc["gen_colour"]
    assert row["method"] == "same" and row["baseline"] == "diff" and row["wins"] == 3 and row["excludes_0"]
    assert (df["better"].isin(["lower", "higher"])).all()
    assert set(df["key"]) <= {m.key for m in registry.METRICS if m.better in ("lower", "higher")}
    with pytest.raises(EvalInputError, match="--paired needs at least 2"):
        run_compare([a], folders / "t2", paired=True)


def test_every_row_is_declared_in_the_registry(folders):
    """Every row of a report (ok, failed or unavailable) carries its registry declaration's label,
    direction and group; compare's directions come from the same place."""
    s = run_eval(folders / "gen", folders / "ref", folders / "rep", _opts(metrics=registry.OPTIONS))
    rows = s.result.metrics
    assert {m.status for m in rows} == {"ok", "unavailable"}
    for m in rows:
        d = registry.lookup(m.key)
        assert d is not None and registry.lookup(m.label) is d, m.key
        assert (m.better, m.group) == (d.better, d.group) and m.label.startswith(d.label), m.key
        assert (m.status == "unavailable") == d.learned, m.key
    assert [m.group for m in rows] == sorted((m.group for m in rows), key=registry.GROUPS.index)
    s2 = run_compare([folders / "rep", folders / "rep"], folders / "t", ["x", "y"])
    for lab, b in s2.better.items():
        assert b == ("reference" if registry.lookup(lab).on_reference else registry.lookup(lab).better)


def test_registry_directions():
    assert registry.badness([2.0, 0.5], "higher").tolist() == [-2.0, -0.5]
    assert registry.badness([1.2, 0.9], "1.0") == pytest.approx([0.2, 0.1])
    assert registry.a_better([-1.0, 0.0, 1.0], "lower").tolist() == [True, False, False]
    assert registry.a_better([-1.0, 0.0, 1.0], "higher").tolist() == [False, False, True]
    assert registry.interval_better(-0.3, -0.1, "lower") and not registry.interval_better(-0.3, 0.1, "lower")
    assert registry.interval_better(0.1, 0.3, "higher") and not registry.interval_better(0.1, 0.3, "1.0")
    assert registry.beats((0.1, 0.2), (0.3, 0.4), "lower") and not registry.beats((0.1, 0.35), (0.3, 0.4), "lower")
    with pytest.raises(ValueError, match="better"):
        registry.a_better([1.0], "1.0")
    assert registry.LEARNED == {"fid", "kid", "is", "omnifid", "fidh", "faed", "clip", "lpips", "sc"}
    assert registry.lookup("LPIPS (generated)[custom:x]").key == "gen_lpips"
    assert registry.direction("not a metric", "lower") == "lower"
