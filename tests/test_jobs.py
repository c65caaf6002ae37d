"""The shared stop mechanism of the batch commands (opama_tools.jobs)."""

import os
import signal
import time

import pytest

from opama_tools.jobs import Terminated, check_stop, stop_raises


def _sigterm_self():
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):  # the Python-level handler runs at the next bytecode boundary
        time.sleep(0.001)


def test_deferred_sigterm_raises_only_at_check_stop():
    """SIGTERM under deferred=True never raises inside the work (e.g. a library constructor)."""
    reached = []
    before = signal.getsignal(signal.SIGTERM)
    with stop_raises(deferred=True):
        _sigterm_self()
        reached.append("after the signal")  # no exception was raised in the middle of the work
        with pytest.raises(Terminated, match="SIGTERM"):
            check_stop()
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    with stop_raises(deferred=True):
        check_stop()  # a new batch starts with no stop pending


def test_immediate_sigterm_raises_in_place():
    with stop_raises():
        with pytest.raises(Terminated):
            _sigterm_self()


# ----------------------------------------------------------------------------- what is done
import json
from dataclasses import dataclass

from opama_model import fileio
from opama_tools.jobs import (
    file_digest,
    is_done,
    read_done,
    record_matches,
    settings_key,
    source_signature,
    write_done,
)


def test_source_signature_follows_content_not_names_or_times(tmp_path):
    import hashlib

    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 3_000_000)  # more than one read chunk
    assert source_signature(a) == file_digest(a) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert file_digest is fileio.file_digest  # one streamed file hash, shared with opama_model
    sig = source_signature(a)
    os.utime(a, ns=(1, 1))
    b = tmp_path / "b.bin"
    b.write_bytes(a.read_bytes())
    assert source_signature(a) == source_signature(b) == sig  # time and name do not count
    a.write_bytes(b"x" * 2_999_999 + b"y")
    assert source_signature(a) != sig
    # a folder: names and contents of its files; a list: its entries in order
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "w.txt").write_text("1")
    (d / "v.txt").write_text("2")
    s1 = source_signature(d)
    (d / "v.txt").rename(d / "u.txt")
    s2 = source_signature(d)
    assert s1 != s2
    (d / "u.txt").write_text("3")
    assert source_signature(d) not in (s1, s2)
    assert source_signature([a, b]) != source_signature([b, a])


def test_settings_key_is_canonical():
    @dataclass(frozen=True)
    class S:
        fov: float
        views: tuple

    k = settings_key("crop", S(90.0, ((0.0, 0.0),)))
    assert len(k) == 16 and int(k, 16) >= 0
    assert settings_key("crop", {"views": [[0.0, 0.0]], "fov": 90.0}) == k  # dataclass = dict, tuple = list
    assert settings_key("crop", S(91.0, ((0.0, 0.0),))) != k
    assert settings_key("crop", S(90.0, ((0.0, 1.0),))) != k
    assert settings_key("crop", S(90, ((0.0, 0.0),))) != k  # 90 and 90.0 differ: normalise first


def test_done_record_round_trip(tmp_path):
    rec, out = tmp_path / "job" / "done.json", tmp_path / "job" / "out.png"
    assert not is_done(rec, "s", "k")
    out.parent.mkdir()
    out.write_bytes(b"png")
    write_done(rec, "s", "k", image="a.png")
    assert json.loads(rec.read_text()) == {"image": "a.png", "source": "s", "settings": "k"}
    assert read_done(rec)["image"] == "a.png"
    assert is_done(rec, "s", "k", [out])
    assert not is_done(rec, "s2", "k", [out]) and not is_done(rec, "s", "k2", [out])
    out.unlink()
    assert not is_done(rec, "s", "k", [out])  # a missing output: redo
    rec.write_text('{"source": {"bytes": 3, "mtime_ns": 1}, "settings": "k"}')  # an older format
    assert not record_matches(read_done(rec), "s", "k")
    rec.write_text("[1, 2]")
    assert read_done(rec) is None and not record_matches(None, "s", "k")
    assert [p.name for p in rec.parent.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_folder_stat_signature_hashes_json_and_stats_weights(tmp_path):
    from opama_tools.jobs import folder_stat_signature

    m = tmp_path / "model"
    (m / "unet").mkdir(parents=True)
    (m / "config.json").write_text('{"a": 1}')
    w = m / "unet" / "w.safetensors"
    w.write_bytes(b"\0" * 1000)
    os.utime(w, ns=(10**18, 10**18))
    sig = folder_stat_signature(m)
    assert sig == folder_stat_signature(m) and len(sig) == 64
    (m / "config.json").write_text('{"a": 2}')  # a config's bytes count, whatever its mtime
    assert folder_stat_signature(m) != sig
    (m / "config.json").write_text('{"a": 1}')
    assert folder_stat_signature(m) == sig
    os.utime(w, ns=(10**18, 10**18 + 1))  # a touched weight file counts
    assert folder_stat_signature(m) != sig
    w.write_bytes(b"\1" * 1000)  # same size and mtime: weights are not read (documented)
    os.utime(w, ns=(10**18, 10**18))
    assert folder_stat_signature(m) == sig
    w.rename(m / "unet" / "v.safetensors")
    assert folder_stat_signature(m) != sig
    with pytest.raises(NotADirectoryError):
        folder_stat_signature(tmp_path / "missing")


def test_batch_exit_code():
    from opama_tools.jobs import batch_exit_code

    assert batch_exit_code(None, 0) == 0 and batch_exit_code(None, []) == 0
    assert batch_exit_code(None, 2) == 1 and batch_exit_code(None, [("a", "bad")]) == 1
    assert batch_exit_code("SIGTERM", 3) == 143 and batch_exit_code("SIGINT", []) == 130
