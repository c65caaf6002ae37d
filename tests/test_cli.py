import subprocess
import sys

import pytest
from typer.testing import CliRunner

from opama_tools.cli import app

runner = CliRunner()
COMMANDS = ["prepare", "caption", "crop", "train", "outpaint", "eval", "demo", "doctor"]


def test_top_level_help_lists_every_command():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for c in COMMANDS:
        assert c in res.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_help_has_example(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example:" in res.output and "opama" in res.output


def test_doctor_with_nothing_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for var in ("OPAMA_SD2_INPAINT", "OPAMA_SD2_CLIP", "OPAMA_BLIP", "OPAMA_SENTENCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPAMA_SENTENCE_MINILM", "")
    from opama_tools import doctor

    monkeypatch.setattr("opama_tools.weights._sentence_pkg_dir", lambda: tmp_path / "none")
    rows = doctor.component_status()
    keys = {r.key for r in rows}
    assert {"sd2-inpaint", "sd2-clip", "blip", "inception", "clip-score", "lpips", "sentence-mpnet"} <= keys
    res = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "stabilityai/stable-diffusion-2-inpainting" in res.output
    assert all(r.found is None for r in rows)
    assert f"0/{len(rows)} components found" in res.output
    assert "mamba-ssm kernels" in res.output and "CUDA available" in res.output


def test_doctor_finds_env_folder(tmp_path, monkeypatch):
    d = tmp_path / "sd2"
    for sub in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        (d / sub).parent.mkdir(parents=True, exist_ok=True)
        (d / sub).write_text("{}")
    monkeypatch.setenv("OPAMA_SD2_INPAINT", str(d))
    from opama_tools.doctor import component_status

    row = next(r for r in component_status() if r.key == "sd2-inpaint")
    assert row.found == str(d) and row.source == "env"


def test_missing_weights_error_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("OPAMA_SD2_INPAINT", raising=False)
    from opama_tools.weights import MissingWeightsError, component, require

    with pytest.raises(MissingWeightsError) as e:
        require(component("sd2-inpaint"))
    msg = str(e.value)
    assert "stabilityai/stable-diffusion-2-inpainting" in msg and "OPAMA_SD2_INPAINT" in msg and "--sd2-inpaint" in msg


def test_demo_data_only(tmp_path):
    res = runner.invoke(app, ["demo", "--data-only", str(tmp_path / "d"), "-n", "2", "--height", "16"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "d").glob("*.exr"))) == 2


def test_opama_model_never_imports_opama_tools():
    code = (
        "import sys, opama_model, opama_model.spherical, opama_model.weights, pkgutil, importlib\n"
        "for m in pkgutil.walk_packages(opama_model.__path__, 'opama_model.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.startswith('opama_tools')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "opama_tools.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "outpaint" in out.stdout
