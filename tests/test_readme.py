"""README.md: short, the set-up block CI runs, a Python quickstart that runs, links that resolve."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _block_after(heading: str, lang: str) -> str:
    """The first ```lang block after the line ``heading``."""
    start = README.index("\n" + heading + "\n")
    m = re.compile(rf"^```{lang}\n(.*?)^```$", re.S | re.M).search(README, start)
    assert m is not None, f"no ```{lang} block after {heading!r}"
    return m.group(1)


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_setup_block_is_the_two_commands():
    # .ci/run executes exactly these two lines (the first ```bash block after "## Set-up")
    assert _block_after("## Set-up", "bash").splitlines() == [
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && opama demo',
        ". .venv/bin/activate && python -m pytest -q",
    ]


def test_quickstart_runs(tmp_path, monkeypatch):
    code = _block_after("## Python quickstart", "python")
    assert "OPaMaPipeline" in code and len(code.splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md quickstart", "exec"), {"__name__": "readme_quickstart"})
    pano = np.asarray(Image.open(tmp_path / "pano.png"))
    assert pano.shape == (128, 256, 3)
    # the input photo's colour is pasted unchanged at the centre (yaw 0, pitch 0)
    assert tuple(pano[64, 128]) == (200, 120, 60)


def test_links_resolve():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target
    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: {target}"
