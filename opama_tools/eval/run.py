"""``opama eval`` as library functions: :func:`run_eval` and :func:`run_compare`.

Each validates its inputs, skips finished work, writes its files and returns a summary; the CLI
(:mod:`opama_tools.cli.evaluate`) only parses, calls them, prints and sets the exit code. A user's
mistake raises :class:`~opama_tools.eval.evaluate.EvalInputError` (a ``ValueError``) whose one-line
message names the file or option, before anything is written.

"Already done" is the job layer's (:mod:`opama_tools.jobs`): ``metrics.json`` is the done record.
It holds ``source`` (the content signature of the paired images, ``meta.json``, caption and
given weight files) and ``settings`` (the key of the options and the pairing), see
:func:`~opama_tools.eval.evaluate.collect_inputs`; a report folder whose record matches and whose
report files all exist is a finished run. ``metrics.json`` is written last
(:func:`~opama_tools.eval.report.write_report`), so an interrupted write never passes for a finished one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from opama_tools.eval.evaluate import EvalInputError, EvalOptions, EvalResult

__all__ = ["EvalSummary", "CompareSummary", "run_eval", "run_compare", "finished_run"]


@dataclass
class EvalSummary:
    """What :func:`run_eval` did.

    ``skipped``: ``out_dir`` already held this run (nothing computed or written; ``result`` is None).
    ``result``: the computed :class:`~opama_tools.eval.evaluate.EvalResult`; ``written``: the report files.
    """

    out_dir: Path
    skipped: bool
    result: EvalResult | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def done(self) -> int:
        """Pairs evaluated (clips, for videos)."""
        return 0 if self.result is None else len(self.result.per_image)

    @property
    def failed(self) -> int:
        """Files that could not be read (their pairs are left out)."""
        return 0 if self.result is None else len(self.result.failed)

    @property
    def exit_code(self) -> int:
        """0, or 1 when a file could not be read or no metric produced a value."""
        if self.result is None:
            return 0
        return 1 if self.result.failed or not self.result.ran_any else 0


@dataclass
class CompareSummary:
    """What :func:`run_compare` built and wrote.

    ``display``, ``values``, ``better``: as :func:`~opama_tools.eval.report.compare_reports`;
    ``paired``: the :func:`~opama_tools.eval.paired.paired_table` (``None`` without ``paired``),
    its baseline the first report; ``written``: ``BASE.md``, ``BASE.csv`` (and ``BASE_paired.csv``).
    """

    display: object
    values: object
    better: object
    paired: object | None
    names: list[str]
    written: list[Path]


def finished_run(out_dir: str | Path, source: str, settings: str, extra: Sequence[str] = ()) -> bool:
    """True when ``out_dir`` holds every report file (and the ``extra`` ones) and its ``metrics.json``
    records this ``source`` signature and ``settings`` key (:func:`opama_tools.jobs.is_done`)."""
    from opama_tools.eval.report import REPORT_FILES
    from opama_tools.jobs import is_done

    out = Path(out_dir)
    return is_done(out / "metrics.json", source, settings, [out / f for f in (*REPORT_FILES, *extra)])


def run_eval(
    gen_dir: str | Path,
    ref_dir: str | Path,
    out_dir: str | Path = "report",
    options: EvalOptions | None = None,
    method: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalSummary:
    """Evaluate ``gen_dir`` against ``ref_dir`` and write the report into ``out_dir``.

    A ``gen_dir`` holding video outputs (``NAME/pano.mkv|mp4``) is evaluated as 360° videos against
    ``REF_DIR/NAME.mkv|mp4`` (:mod:`opama_tools.eval.video`: per-frame and temporal metrics, a
    failed pair when the frame counts differ); otherwise as panoramas.

    Skips the work (``skipped=True``) when ``out_dir`` already holds the report of the same
    inputs and options, unless ``overwrite``. ``method`` names the scored method in the report
    (default: from the outpainting ``meta.json``); ``progress(done, total, name)`` is called
    after each pair, ``log(msg)`` for notes.

    Raises:
        EvalInputError: a folder, caption or weight file missing, an invalid option, nothing to
            pair, mismatched sizes, no requested metric able to run here, a broken video
            ``meta.json``/``input_masks.npy``, or ``out_dir`` not writable; nothing is written then.
    """
    from opama_tools.eval.evaluate import collect_inputs, evaluate
    from opama_tools.eval.registry import VIDEO_OPTIONS
    from opama_tools.eval.report import check_out_dir, write_report
    from opama_tools.eval.video import PER_FRAME_FILE, collect_video_inputs, evaluate_videos, has_video_outputs

    opt = options or EvalOptions()
    gen_dir, ref_dir, out = Path(gen_dir), Path(ref_dir), Path(out_dir)
    for d in (gen_dir, ref_dir):
        if not d.is_dir():
            raise EvalInputError(f"{d}: not a folder")
    for f in (opt.captions, opt.gen_captions):
        if f is not None and not Path(f).is_file():
            raise EvalInputError(f"{f}: caption file not found")
    try:
        check_out_dir(out)
    except EvalInputError:
        raise
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    opt.validate()
    if has_video_outputs(gen_dir):
        inputs = collect_video_inputs(gen_dir, ref_dir, opt, method)
        if not overwrite and finished_run(out, inputs.source, inputs.settings, (PER_FRAME_FILE,)):
            return EvalSummary(out, skipped=True)
        res = evaluate_videos(gen_dir, ref_dir, opt, progress=progress, log=log, inputs=inputs)
    else:
        if not set(opt.metrics) - set(VIDEO_OPTIONS):
            raise EvalInputError(f"--metrics {','.join(opt.metrics)}: temporal metrics need videos, and {gen_dir} "
                                 "holds no video output (pano.mkv or pano.mp4)")
        inputs = collect_inputs(gen_dir, ref_dir, opt, method)
        if not overwrite and finished_run(out, inputs.source, inputs.settings):
            return EvalSummary(out, skipped=True)
        res = evaluate(gen_dir, ref_dir, opt, progress=progress, log=log, inputs=inputs)
    try:
        written = write_report(res, out)
    except OSError as e:
        raise EvalInputError(f"--out {out}: cannot write the report ({e.strerror or e})") from None
    return EvalSummary(out, skipped=False, result=res, written=written)


def run_compare(
    reports: Sequence[str | Path],
    out: str | Path = "compare",
    names: Sequence[str] | None = None,
    paired: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
) -> CompareSummary:
    """Side-by-side table of ``reports`` (report folders or their ``metrics.json``), written as
    ``OUT.md`` and ``OUT.csv``; with ``paired`` also each method minus the first report, panorama
    by panorama (``bootstrap`` resamples, ``seed``), as ``OUT_paired.csv``. ``names``: one method
    name per report (default: the scored method, or the folder's name).

    Raises:
        EvalInputError: no report, a folder without ``metrics.json``, names not one per report,
            ``--paired`` without ``per_image.csv``, a negative ``bootstrap``/``seed``, an unreadable
            report or an unwritable ``out``.
    """
    from opama_tools.eval.paired import paired_table
    from opama_tools.eval.report import check_out_dir, compare_reports, write_compare
    from opama_tools.io import atomic_path

    if len(reports) < 1:
        raise EvalInputError("compare needs at least one report folder")
    for r in reports:
        p = Path(r)
        if not ((p / "metrics.json").is_file() or (p.is_file() and p.name.endswith(".json"))):
            raise EvalInputError(f"{r}: no metrics.json (not an opama eval report)")
    for flag, v in (("--bootstrap", bootstrap), ("--seed", seed)):
        if v < 0:
            raise EvalInputError(f"{flag} must be >= 0, got {v}")
    base = Path(out)
    try:
        check_out_dir(base.parent if str(base.parent) else Path("."))
        disp, vals, better = compare_reports(list(reports), list(names) if names is not None else None)
        pairs = paired_table(list(reports), list(disp.columns), reps=bootstrap, seed=seed) if paired else None
    except EvalInputError:
        raise
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise EvalInputError(f"cannot read the reports: {e}") from None
    try:
        written = write_compare(disp, vals, better, base)
        if pairs is not None:
            dst = base.parent / f"{base.name.removesuffix('.md').removesuffix('.csv')}_paired.csv"
            with atomic_path(dst) as tmp:
                pairs.to_csv(tmp, index=False)
            written.append(dst)
    except OSError as e:
        raise EvalInputError(f"--out {base}: cannot write ({e.strerror or e})") from None
    return CompareSummary(disp, vals, better, pairs, [str(c) for c in disp.columns], written)
