"""Kill tests: ``prepare --workers 2``, ``crop`` and ``caption`` stopped by SIGKILL or SIGTERM as soon
as their first output appears.

For each: no process of the job survives its parent, every visible output is complete and
valid, SIGTERM exits 143 with a line saying how to resume, and a re-run finishes with a
manifest equal to an uninterrupted run's (same rows and values; only the ``updated``
timestamps of prepare's manifest may differ).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest

from opama_tools.data.exr import write_exr

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to list processes")

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- processes
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from /proc, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[1], []).append(int(name))
    out: set[int] = set()
    stack = [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def start(args: list, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="200")
    fh = open(log, "w")  # a file, not a pipe: a surviving child could hold a pipe open forever
    return subprocess.Popen([sys.executable, "-m", "opama_tools.cli", *map(str, args)], stdout=fh,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def run_to_end(args: list, log: Path) -> tuple[int, str]:
    """The re-run, in this process (the same CLI code; saves a Python + torch start-up)."""
    from typer.testing import CliRunner

    from opama_tools.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    log.write_text(res.output)
    return res.exit_code, res.output


def stop_when(proc: subprocess.Popen, ready, sig: int, min_children: int = 0) -> set[int]:
    """Wait until ``ready()`` (the first output is there), send ``sig``; returns the job's other processes."""
    deadline = time.monotonic() + 180
    kids: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        kids |= descendants(proc.pid)
        if ready() and len(kids) >= min_children:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the job ended before the stop: make the inputs bigger"
    kids |= descendants(proc.pid)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return kids


def assert_all_gone(pids: set[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "processes survived their parent"


def visible(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if not any(s.startswith(".") for s in p.relative_to(root).parts))


def hidden(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*"))


# ----------------------------------------------------------------------------- prepare
N_PREPARE = 24


@pytest.fixture(scope="module")
def exr_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("exr")
    rng = np.random.default_rng(3)
    for i in range(N_PREPARE):  # different contents: a row mixed up with another's would show
        write_exr(d / f"p{i:02d}.exr", rng.lognormal(0, 1, (384, 768, 3)).astype(np.float32), compression="none")
    return d


@pytest.fixture(scope="module")
def prepare_reference(exr_dir, tmp_path_factory):
    from opama_tools.data.prepare import PrepareConfig, prepare_dataset, read_manifest

    out = tmp_path_factory.mktemp("ref") / "out"
    s = prepare_dataset(exr_dir, out, PrepareConfig(size=(64, 128)), workers=1)
    assert s.done == N_PREPARE
    return read_manifest(out / "manifest.csv").drop(columns="updated"), out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_prepare_workers_killed(exr_dir, prepare_reference, tmp_path, sig):
    from opama_tools.data.prepare import JOURNAL_NAME, read_journal, read_manifest

    ref, ref_out = prepare_reference
    out = tmp_path / "out"
    args = ["prepare", exr_dir, out, "--size", "64x128", "--workers", "2"]
    proc = start(args, tmp_path / "log1")
    kids = stop_when(proc, lambda: out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()), sig,
                     min_children=2)
    assert len(kids) >= 2  # the two workers (and the resource tracker) were running
    assert_all_gone(kids)
    log = (tmp_path / "log1").read_text()
    assert "Traceback" not in log, log
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "interrupted (SIGTERM)" in log and "re-run the same command" in log
        assert not hidden(out)  # no temp file, journal folded
    else:
        assert proc.returncode == -signal.SIGKILL
    pngs = sorted(out.glob("*.png"))
    assert 1 <= len(pngs) < N_PREPARE, "the stop should land mid-way"
    for p in pngs:  # every visible PNG is complete and right
        np.testing.assert_array_equal(iio.imread(p), iio.imread(ref_out / p.name))
    # every finished PNG is recorded (manifest or journal), with its metadata
    rows = read_journal(out / JOURNAL_NAME)
    if (out / "manifest.csv").exists():
        rows += read_manifest(out / "manifest.csv").to_dict("records")
    recorded = {r["output"] for r in rows if r["status"] == "done" and r["operator"] == "percentile"}
    assert {p.name for p in pngs} <= recorded

    # re-run: completes, the finished files are skipped (not redone), the manifest equals the reference
    before = {p.name: p.stat().st_mtime_ns for p in pngs}
    code, log2 = run_to_end(args, tmp_path / "log2")
    assert code == 0, log2
    assert f"done {N_PREPARE - len(pngs)} / skipped {len(pngs)} / failed 0" in log2
    assert {p.name: p.stat().st_mtime_ns for p in pngs} == before
    assert not hidden(out)
    got = read_manifest(out / "manifest.csv").drop(columns="updated")
    pd.testing.assert_frame_equal(got, ref)


# ----------------------------------------------------------------------------- crop
N_CROP = 16


@pytest.fixture(scope="module")
def pano_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("panos")
    rng = np.random.default_rng(4)
    for i in range(N_CROP):
        iio.imwrite(d / f"p{i:02d}.png",
                    (rng.random((64, 128, 3)) * 255).astype(np.uint8))
    return d


CROP_ARGS = ["--views", "ring8", "--size", "32", "--cube", "16", "--masks"]


@pytest.fixture(scope="module")
def crop_reference(pano_dir, tmp_path_factory):
    from opama_model.views import parse_views
    from opama_tools.data.crop import CropSettings, run_crop

    out = tmp_path_factory.mktemp("cropref") / "out"
    r = run_crop(pano_dir, out, CropSettings(views=tuple(parse_views("ring8")), size=32, cube=16, masks=True))
    assert len(r.done) == N_CROP
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in visible(root) if p.is_file()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_crop_killed(pano_dir, crop_reference, tmp_path, sig):
    out = tmp_path / "out"
    args = ["crop", pano_dir, out, *CROP_ARGS]
    proc = start(args, tmp_path / "log1")
    kids = stop_when(proc, lambda: (out / "p00" / "crop.json").exists(), sig)
    assert_all_gone(kids)
    log = (tmp_path / "log1").read_text()
    assert "Traceback" not in log, log
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "interrupted (SIGTERM)" in log and "re-run the same command" in log
        assert not hidden(out)
        assert (out / "views.csv").is_file()
    ref = _tree(crop_reference)
    folders = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert 1 <= len(folders) < N_CROP, "the stop should land mid-way"
    for f in folders:  # each visible panorama folder is complete and identical to the reference
        assert _tree(f) == {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(f.name + "/")}
    if (out / "views.csv").exists():  # lists exactly the complete folders
        df = pd.read_csv(out / "views.csv")
        assert set(df["image"]) == {f.name + ".png" for f in folders}

    code, log2 = run_to_end(args, tmp_path / "log2")
    assert code == 0, log2
    assert f"{N_CROP - len(folders)} done, {len(folders)} skipped, 0 failed" in log2
    assert not hidden(out)
    assert _tree(out) == ref  # views.csv, crop.json and every PNG byte for byte


# ----------------------------------------------------------------------------- caption
N_CAPTION = 300  # enough that a stop sent after the first line lands mid-way (each takes ~ms)


@pytest.fixture(scope="module")
def caption_inputs(tmp_path_factory):
    from opama_tools.data.synthetic import make_scene

    d = tmp_path_factory.mktemp("capin")
    panos = d / "png"
    panos.mkdir()
    tiny = np.zeros((2, 4, 3), np.uint8)
    recs = []
    for i in range(N_CAPTION):
        iio.imwrite(panos / f"synth_{i:04d}.png", tiny)
        sc = make_scene(i)
        recs.append({"image": f"synth_{i:04d}.exr", "seed": i, "kind": sc.kind, "caption": sc.description,
                     "scene": sc.to_dict()})
    (d / "scenes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return panos, d / "scenes.jsonl"


def _caption_args(panos: Path, scenes: Path, out: Path) -> list:
    return ["caption", panos, out, "--from-metadata", scenes, "--augment", "--stride", "60"]


@pytest.fixture(scope="module")
def caption_reference(caption_inputs, tmp_path_factory):
    from opama_tools.data.caption import CaptionSettings, run_metadata_job

    panos, scenes = caption_inputs
    out = tmp_path_factory.mktemp("capref") / "ref.jsonl"
    s = run_metadata_job(panos, out, scenes, CaptionSettings(augment=True, stride=60), progress=False)
    assert s.done == N_CAPTION
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_caption_killed(caption_inputs, caption_reference, tmp_path, sig):
    panos, scenes = caption_inputs
    out = tmp_path / "caps.jsonl"
    args = _caption_args(panos, scenes, out)
    proc = start(args, tmp_path / "log1")
    kids = stop_when(proc, lambda: out.exists() and out.stat().st_size > 0, sig)
    assert_all_gone(kids)
    log = (tmp_path / "log1").read_text()
    assert "Traceback" not in log, log
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "interrupted (SIGTERM)" in log and "re-run the same command" in log
    text = out.read_text()
    assert text.endswith("\n")  # no torn line: each record is one write
    lines = [json.loads(line) for line in text.splitlines()]
    assert 1 <= len(lines) < N_CAPTION, "the stop should land mid-way"
    assert lines == caption_reference[: len(lines)]
    assert not hidden(tmp_path)

    code, log2 = run_to_end(args, tmp_path / "log2")
    assert code == 0, log2
    assert f"{N_CAPTION - len(lines)} done, {len(lines)} skipped, 0 failed" in log2
    assert [json.loads(line) for line in out.read_text().splitlines()] == caption_reference
