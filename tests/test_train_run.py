"""opama_tools.train.run_train: the library function behind `opama train` (and the demo's training)."""

from pathlib import Path

import pytest
import torch

from opama_model.training import TrainConfig, train
from opama_tools.data.train_data import load_records
from opama_tools.train import TrainInputError, run_train

from test_train import CANVAS, _tensors, _write_panoramas


def _cfg(out, **kw):
    base = dict(out=str(out), steps=2, canvas_hw=CANVAS, save_every=0, val_every=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_run_train_equals_train_and_reports(tmp_path):
    torch.set_num_threads(1)
    cap = _write_panoramas(tmp_path / "png", 2)
    notes = []
    summary = run_train(_cfg(tmp_path / "lib"), tmp_path / "png", [cap], notify=notes.append)
    assert summary.exit_code == 0 and summary.result.step == 2
    assert summary.result.model_dir is not None and (summary.result.model_dir / "opama_model.json").is_file()
    # a random tiny backbone trained without warm-ups gets the recipe hint, before training
    assert summary.hint and notes == [summary.hint] and "--vae-steps" in summary.hint
    # the same run through the trainer directly gives the same weights, bit for bit
    direct = train(_cfg(tmp_path / "direct"), load_records(tmp_path / "png", [cap]))
    a, b = _tensors(summary.result.model_dir), _tensors(direct.model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["no-folder", "no-images", "bad-captions"])
def test_run_train_bad_input_one_line_nothing_written(tmp_path, case):
    data, caps = tmp_path / "png", []
    if case == "no-images":
        data.mkdir()
    elif case == "bad-captions":
        _write_panoramas(data, 1)
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{not json\n")
        caps = [bad]
    out = tmp_path / "run"
    with pytest.raises(TrainInputError) as e:
        run_train(_cfg(out), data, caps)
    msg = str(e.value)
    assert "\n" not in msg and msg
    assert not out.exists()
