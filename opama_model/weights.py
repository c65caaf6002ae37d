"""Where pretrained weights are looked for, without ever downloading.

A :class:`Component` is one pretrained part (a Hugging Face repo folder or a single
file). :func:`locate` looks, in order, at

1. an explicit path (a command's CLI flag),
2. the component's environment variable (``OPAMA_*``),
3. the standard local cache: the Hugging Face hub cache (``$HF_HOME``/``$HF_HUB_CACHE``,
   offline, ``local_files_only=True``) for repos, or the listed cache paths for files.

Nothing is ever fetched from the network. :func:`require` raises
:class:`MissingWeightsError` with one clear message naming what to place where.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Component", "MissingWeightsError", "MODEL_COMPONENTS", "locate", "require", "hf_cache_dir"]


class MissingWeightsError(FileNotFoundError):
    """A pretrained component is not on this machine; the message says what to place where."""


@dataclass(frozen=True)
class Component:
    """One pretrained part of the pipeline.

    Attributes:
        key: short name (``sd2-inpaint``).
        title: human description.
        repo_id: Hugging Face repo id, for folder components.
        files: for single-file components, candidate cache paths (functions so env vars are read late).
        env: environment variable holding a local path.
        flag: the CLI flag of the commands that accept a path.
        needed_by: commands (and metrics) that need it.
        required_files: files (relative to the folder) that must exist for a folder to count as found.
    """

    key: str
    title: str
    env: str
    flag: str
    needed_by: tuple[str, ...]
    repo_id: str | None = None
    files: tuple[Callable[[], Path], ...] = field(default_factory=tuple)
    required_files: tuple[str, ...] = ()

    def cache_hint(self) -> str:
        if self.repo_id:
            name = "models--" + self.repo_id.replace("/", "--")
            return str(Path(hf_cache_dir()) / name)
        return " or ".join(str(f()) for f in self.files)


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder in force (honours ``HF_HUB_CACHE`` / ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return os.path.join(home, "hub")


def _hf_snapshot(repo_id: str) -> Path | None:
    """Folder of the newest cached snapshot of ``repo_id``, or None (offline, no network)."""
    root = Path(hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    snaps = root / "snapshots"
    if not snaps.is_dir():
        return None
    ref = root / "refs" / "main"
    if ref.is_file():
        cand = snaps / ref.read_text().strip()
        if cand.is_dir():
            return cand
    dirs = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return dirs[-1] if dirs else None


def _ok(path: Path, comp: Component) -> bool:
    if not path.exists():
        return False
    if path.is_dir():
        return all((path / f).exists() for f in comp.required_files)
    return True


def locate(comp: Component, explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Find ``comp`` locally. Returns ``(path or None, where)`` with ``where`` in {flag, env, cache, ''}."""
    if explicit:
        p = Path(explicit).expanduser()
        return (p, "flag") if _ok(p, comp) else (None, "")
    env = os.environ.get(comp.env)
    if env:
        p = Path(env).expanduser()
        if _ok(p, comp):
            return p, "env"
    if comp.repo_id:
        snap = _hf_snapshot(comp.repo_id)
        if snap is not None and _ok(snap, comp):
            return snap, "cache"
    for f in comp.files:
        p = f()
        if p.exists():
            return p, "cache"
    return None, ""


def require(comp: Component, explicit: str | os.PathLike | None = None) -> Path:
    """Path of ``comp`` or :class:`MissingWeightsError` naming what to place where."""
    path, _ = locate(comp, explicit)
    if path is not None:
        return path
    if explicit:
        where = f"{explicit} (given with {comp.flag}) does not exist or lacks {', '.join(comp.required_files) or 'the file'}"
    else:
        where = "not found"
    what = f"the Hugging Face repo {comp.repo_id}" if comp.repo_id else "the file"
    raise MissingWeightsError(
        f"{comp.title}: {where}. Place {what} at {comp.cache_hint()} "
        f"(or pass {comp.flag} PATH, or set {comp.env}=PATH); no download is attempted. See `opama doctor`."
    )


MODEL_COMPONENTS: tuple[Component, ...] = (
    Component(
        key="sd2-inpaint",
        title="SD-2 inpainting UNet + VAE + scheduler",
        repo_id="stabilityai/stable-diffusion-2-inpainting",
        env="OPAMA_SD2_INPAINT",
        flag="--sd2-inpaint",
        needed_by=("train --preset sd2", "outpaint --preset sd2"),
        required_files=("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"),
    ),
    Component(
        key="sd2-clip",
        title="CLIP text + image encoders (SD-2.1 unCLIP)",
        repo_id="stabilityai/stable-diffusion-2-1-unclip",
        env="OPAMA_SD2_CLIP",
        flag="--sd2-clip",
        needed_by=("train --preset sd2", "outpaint --preset sd2"),
        required_files=("text_encoder/config.json", "tokenizer", "image_encoder/config.json"),
    ),
)
