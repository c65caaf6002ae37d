"""`opama caption`: tiny random BLIP / BLIP-2 saved with save_pretrained and loaded through the real path."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from opama_tools.data.caption import (
    CaptionSettings,
    cut_views,
    load_captioner,
    read_panorama,
    run_caption_job,
    run_metadata_job,
    scene_view_caption,
    view_yaws,
    visible_objects,
)
from opama_tools.cli import app
from opama_tools.data.synthetic import Box, Scene, make_scene, render_equirect, render_perspective

runner = CliRunner()
WORDS = "a the of photography room with window wall floor lamp building sky sun view and on under blue grey".split()
YAWS_30 = [30 * k for k in range(12)]


def _blip_dir(root: Path) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    root.mkdir(parents=True, exist_ok=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tok = BertTokenizer(str(vocab))  # positional: BertTokenizer(vocab_file=...) builds a near-empty vocab
    tok.add_special_tokens({"bos_token": "[DEC]"})
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id),
        projection_dim=32,
    )
    torch.manual_seed(0)
    out = root / "blip"
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _blip2_dir(root: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                              OPTConfig, PreTrainedTokenizerFast)

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                                  bos_token="</s>")
    proc = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                          num_query_tokens=4)  # adds the <image> token to the tokenizer
    cfg = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64),
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id).to_dict(),
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    out = root / "blip2"
    Blip2ForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _tonemapped_png(hdr: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(hdr / (1.0 + hdr), 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"blip": _blip_dir(root), "blip2": _blip2_dir(root)}


@pytest.fixture(scope="module")
def pano_src(tmp_path_factory):
    """Two tonemapped synthetic panoramas (32x64 PNG) and a corrupt PNG."""
    d = tmp_path_factory.mktemp("panos")
    for k in range(2):
        _tonemapped_png(render_equirect(make_scene(k), 32, 64, supersample=1), d / f"synth_{k:04d}.png")
    good = (d / "synth_0000.png").read_bytes()
    (d / "broken.png").write_bytes(good[: len(good) // 2])  # truncated PNG: header fine, data cut
    return d


@pytest.fixture
def pano_dir(pano_src, tmp_path):
    d = tmp_path / "panos"
    shutil.copytree(pano_src, d)
    return d


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("OPAMA_BLIP", raising=False)


def _lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line valid JSON


# ----------------------------------------------------------------------------- geometry of the views


def test_view_yaws():
    assert view_yaws(30) == YAWS_30
    assert view_yaws(45) == [45.0 * k for k in range(8)]
    y7 = view_yaws(7)
    assert len(y7) == math.ceil(360 / 7) and y7[-1] == 357 and all(y < 360 for y in y7)
    assert view_yaws(360) == [0.0]
    with pytest.raises(ValueError):
        view_yaws(0)


def test_cut_views_match_py360convert_at_k_times_stride():
    import py360convert

    pano = read_panorama_like(make_scene(3), 64)
    views = cut_views(pano, YAWS_30, 10.0, 90.0, 48)  # views as sharp as the panorama: no pre-filtering
    assert len(views) == 12 and views[0].shape == (48, 48, 3) and views[0].dtype == np.uint8
    for yaw, v in zip(YAWS_30, views):
        ref = py360convert.e2p(pano.astype(np.float32), 90.0, yaw, 10.0, (48, 48))
        assert np.abs(v.astype(np.float32) - ref).mean() < 0.4  # same geometry (8-bit rounding)
    # Smaller views: the panorama is area-downsampled first (antialiasing), still the same picture.
    small = cut_views(pano, [90.0], 10.0, 90.0, 16)[0].astype(np.float32)
    ref = py360convert.e2p(pano.astype(np.float32), 90.0, 90.0, 10.0, (16, 16))
    assert np.abs(small - ref).mean() < 3  # (10 degrees off in yaw gives 4.2)
    # The AOG-Net bug (yaw = view index) would give near-identical views; ours differ.
    assert np.abs(views[0].astype(float) - views[6].astype(float)).mean() > 5


def read_panorama_like(scene, h: int) -> np.ndarray:
    hdr = render_equirect(scene, h, 2 * h, supersample=1)
    return (np.clip(hdr / (1 + hdr), 0, 1) * 255 + 0.5).astype(np.uint8)


def test_read_panorama_errors(tmp_path, pano_src):
    assert read_panorama(pano_src / "synth_0000.png").shape == (32, 64, 3)
    with pytest.raises(ValueError, match="cannot decode|not a readable"):
        read_panorama(pano_src / "broken.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ValueError, match="not a readable PNG/JPEG image"):
        read_panorama(tmp_path / "text.jpg")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "sq.png")
    with pytest.raises(ValueError, match="2:1"):
        read_panorama(tmp_path / "sq.png")


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("which,kind", [("blip", "blip"), ("blip2", "blip-2")])
def test_load_picks_class_from_config_and_tokenizer_roundtrips(models, which, kind):
    cap = load_captioner(str(models[which]), device="cpu")
    assert cap.kind == kind and cap.dtype == torch.float32
    assert next(cap.model.parameters()).dtype == torch.float32
    tok = cap.processor.tokenizer
    ids = tok("room window", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids and len(ids) == 2
    assert tok.decode(ids).split() == ["room", "window"]
    texts = cap.caption([np.zeros((40, 40, 3), np.uint8)] * 3)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert not any(t.startswith("a photography of") for t in texts)  # prompt removed


def test_model_as_repo_id_from_hf_cache(models, tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    snap = hub / "models--acme--tiny-blip" / "snapshots" / "0123abc"
    shutil.copytree(models["blip"], snap)
    (hub / "models--acme--tiny-blip" / "refs").mkdir()
    (hub / "models--acme--tiny-blip" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cap = load_captioner("acme/tiny-blip", device="cpu")
    assert cap.kind == "blip" and Path(cap.source) == snap


def test_default_model_from_env(models, no_weights, monkeypatch):
    monkeypatch.setenv("OPAMA_BLIP", str(models["blip2"]))
    assert load_captioner(None, device="cpu").kind == "blip-2"


@pytest.mark.parametrize("model", [None, "missing-folder", "acme/not-cached"])
def test_missing_model_clear_error_exit_2(no_weights, pano_dir, tmp_path, model):
    args = ["caption", str(pano_dir), str(tmp_path / "o.jsonl")]
    if model:
        args += ["--model", str(tmp_path / model) if "/" not in model else model]
    res = runner.invoke(app, args, env={"COLUMNS": "400"})
    assert res.exit_code == 2, res.output
    msg = " ".join(res.output.split())
    assert msg.startswith("error: BLIP captioner") and "no download is attempted" in msg and "opama doctor" in msg
    repo = "acme/not-cached" if model == "acme/not-cached" else "Salesforce/blip-image-captioning-large"
    assert repo in msg and ("models--" + repo.replace("/", "--")) in msg
    if model == "missing-folder":
        assert "missing-folder" in msg and "--model" in msg
    assert not (tmp_path / "o.jsonl").exists()


# ----------------------------------------------------------------------------- the job


def test_cli_augment_12_views_resume_and_corrupt_image(models, pano_dir, tmp_path):
    out = tmp_path / "caps.jsonl"
    args = ["caption", str(pano_dir), str(out), "--model", str(models["blip"]), "--augment", "--stride", "30",
            "--pitch", "0", "--fov", "90", "--view-size", "32", "--max-new-tokens", "4", "--batch-size", "8",
            "--device", "cpu"]
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 1, res.output  # one corrupt image
    assert "2 done, 0 skipped, 1 failed" in res.output
    assert "broken.png" in res.output
    recs = {r["image"]: r for r in _lines(out)}
    assert set(recs) == {"broken.png", "synth_0000.png", "synth_0001.png"}
    assert "caption" not in recs["broken.png"] and "decode" in recs["broken.png"]["error"]
    for name in ("synth_0000.png", "synth_0001.png"):
        r = recs[name]
        assert "error" not in r and isinstance(r["caption"], str)
        assert [v["yaw"] for v in r["views"]] == YAWS_30
        assert all(v["pitch"] == 0 and isinstance(v["caption"], str) for v in r["views"])
    first = out.read_text()

    # Re-run: the captioned panoramas are skipped, the corrupt one retried (and fails again).
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 1 and "0 done, 2 skipped, 1 failed" in res.output, res.output
    again = _lines(out)
    assert [r["image"] for r in again].count("synth_0000.png") == 1 and len(again) == 3
    assert [ln for ln in first.splitlines() if "synth" in ln] == [ln for ln in out.read_text().splitlines() if "synth" in ln]

    # Fixed image: the next run captions only it and exits 0.
    shutil.copy(pano_dir / "synth_0000.png", pano_dir / "broken.png")
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "1 done, 2 skipped, 0 failed" in res.output, res.output
    recs = {r["image"]: r for r in _lines(out)}
    assert len(recs) == 3 and all("error" not in r for r in recs.values())
    assert len(recs["broken.png"]["views"]) == 12


def test_generate_calls_batched_across_views_and_panoramas(models, pano_dir, tmp_path):
    (pano_dir / "broken.png").unlink()
    cap = load_captioner(str(models["blip"]), device="cpu", batch_size=5, max_new_tokens=3)
    sizes: list[int] = []
    seen: list[np.ndarray] = []
    real_generate, real_batch = cap.model.generate, cap.generate_batch

    def counting_generate(**kw):
        sizes.append(kw["pixel_values"].shape[0])
        return real_generate(**kw)

    def recording_batch(images):
        seen.extend(np.asarray(im) for im in images)
        return real_batch(images)

    cap.model.generate = counting_generate
    cap.generate_batch = recording_batch
    settings = CaptionSettings(augment=True, stride=30, pitch=0, fov=90, view_size=24)
    s = run_caption_job(pano_dir, tmp_path / "c.jsonl", cap, settings, progress=False)
    assert (s.done, s.failed, s.exit_code) == (2, 0, 0)
    n_images = 2 * (1 + 12)
    assert len(sizes) == math.ceil(n_images / 5) == 6  # one generate call per batch
    assert sizes == [5, 5, 5, 5, 5, 1]
    # The images captioned are the panorama then its views at yaw 0, 30, ..., 330.
    for k, name in enumerate(("synth_0000.png", "synth_0001.png")):
        pano = read_panorama(pano_dir / name)
        views = cut_views(pano, YAWS_30, 0, 90, 24)
        block = seen[13 * k : 13 * (k + 1)]
        assert np.array_equal(block[0], pano)
        assert all(np.array_equal(a, b) for a, b in zip(block[1:], views))

    # A whole panorama's 13 images in one batch: a single call.
    sizes.clear()
    cap.batch_size = 13
    s = run_caption_job(pano_dir, tmp_path / "d.jsonl", cap, settings, progress=False)
    assert s.done == 2 and sizes == [13, 13]


def test_blip2_cli_and_half_written_line(models, pano_dir, tmp_path):
    (pano_dir / "broken.png").unlink()
    out = tmp_path / "b2.jsonl"
    args = ["caption", str(pano_dir), str(out), "--model", str(models["blip2"]), "--augment", "--stride", "90",
            "--pitch", "15", "--view-size", "24", "--max-new-tokens", "3", "--prompt", ""]
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "blip-2" in res.output
    recs = _lines(out)
    assert [r["image"] for r in recs] == ["synth_0000.png", "synth_0001.png"]
    assert all([(v["yaw"], v["pitch"]) for v in r["views"]] == [(0, 15), (90, 15), (180, 15), (270, 15)] for r in recs)
    # A run killed mid-write leaves half a line: the next run drops it and captions that panorama again.
    text = out.read_text().splitlines()
    out.write_text(text[0] + "\n" + text[1][: len(text[1]) // 2])
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "1 done, 1 skipped, 0 failed" in res.output, res.output
    assert [r["image"] for r in _lines(out)] == ["synth_0000.png", "synth_0001.png"]
    # --overwrite starts afresh.
    res = runner.invoke(app, args + ["--overwrite"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "2 done, 0 skipped" in res.output
    assert len(_lines(out)) == 2


def test_bad_options_exit_2(models, pano_dir, tmp_path):
    res = runner.invoke(app, ["caption", str(tmp_path / "nope"), str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "not a folder" in res.output
    res = runner.invoke(app, ["caption", str(pano_dir), str(tmp_path / "o.jsonl"), "--augment", "--stride", "0",
                              "--model", str(models["blip"])])
    assert res.exit_code == 2 and "stride" in res.output
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    res = runner.invoke(app, ["caption", str(pano_dir), str(tmp_path / "o.jsonl"), "--model", str(other)])
    assert res.exit_code == 2 and "'bert' is not a captioner" in res.output
    if not torch.cuda.is_available():
        res = runner.invoke(app, ["caption", str(pano_dir), str(tmp_path / "o.jsonl"), "--model", str(models["blip"]),
                                  "--device", "cuda"])
        assert res.exit_code == 2 and "CUDA is not available" in res.output
    assert not (tmp_path / "o.jsonl").exists()


# ----------------------------------------------------------------------------- captions from synthetic scenes


def test_visible_buildings_agree_with_the_renderer():
    """A building is reported in a view iff removing it changes the rendered view."""
    checked = 0
    for seed in range(6):
        scene = make_scene(seed, "outdoor")
        for yaw, pitch in ((0, 0), (120, 10), (240, -20)):
            vis = visible_objects(scene, yaw, pitch, 90, samples=16)
            full = render_perspective(scene, yaw, pitch, 90, (16, 16), supersample=1)
            for k in range(len(scene.buildings)):
                other = Scene(**{**scene.__dict__, "buildings": scene.buildings[:k] + scene.buildings[k + 1:]})
                diff = np.abs(render_perspective(other, yaw, pitch, 90, (16, 16), supersample=1) - full).max(-1)
                changed = int((diff > 1e-4).sum())
                assert (changed > 0) == (k in vis["buildings"])
                if changed:
                    assert abs(changed - vis["buildings"][k] * 256) <= 1
                checked += 1
    assert checked >= 20


def test_scene_view_captions_follow_the_view():
    street = Scene(kind="outdoor", seed=0, camera_height=1.6, sun_yaw=180.0, sun_pitch=20.0, ground="sandy",
                   buildings=[Box((-5, -1.6, 25), (5, 12, 35), "brick red")])
    front, back = scene_view_caption(street, 0), scene_view_caption(street, 180)
    assert "brick red building" in front and "sun" not in front and "sandy ground" in front
    assert "building" not in back and "sun low over the horizon" in back
    assert "building" not in scene_view_caption(street, 90)
    room = Scene(kind="indoor", seed=0, camera_height=1.5, room_lo=(-3, -1.5, -3), room_hi=(3, 1.2, 3),
                 wall_colours=("pale yellow", "grey", "white", "white"),
                 windows=[{"wall": 2, "centre": (0.0, 0.2, 3.0), "w": 1.2, "h": 1.0, "radiance": 100.0}],
                 lamps=[(0.0, 1.2, -1.0)])
    f, b = scene_view_caption(room, 0), scene_view_caption(room, 180)
    assert "pale yellow wall" in f and "a bright window" in f and "lamp" not in f
    assert "grey wall" in b and "window" not in b
    assert "ceiling lamp" in scene_view_caption(room, 180, 45)
    assert scene_view_caption(room, 0, -90) == "a view of a wooden floor"


def test_from_metadata_without_weights(tmp_path, no_weights):
    from opama_tools.data.exr import read_exr
    from opama_tools.data.synthetic import generate_dataset

    src = tmp_path / "synth"
    paths = generate_dataset(src, 2, height=16, seed=2, supersample=1)
    png = tmp_path / "png"
    png.mkdir()
    for p in paths:
        _tonemapped_png(read_exr(p), png / (p.stem + ".png"))
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(png / "stray.png")  # no scene record
    out = tmp_path / "m.jsonl"
    args = ["caption", str(png), str(out), "--from-metadata", str(src / "scenes.jsonl"), "--augment",
            "--stride", "30"]
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert res.exit_code == 1 and "2 done, 0 skipped, 1 failed" in res.output, res.output
    recs = {r["image"]: r for r in _lines(out)}
    assert "stray" in recs["stray.png"]["error"]
    scenes = {json.loads(x)["image"]: json.loads(x) for x in (src / "scenes.jsonl").read_text().splitlines()}
    for p in paths:
        r = recs[p.stem + ".png"]
        assert r["caption"] == scenes[p.name]["caption"]
        assert [v["yaw"] for v in r["views"]] == YAWS_30
        scene = make_scene(scenes[p.name]["seed"])
        assert [v["caption"] for v in r["views"]] == [scene_view_caption(scene, y, 0, 90) for y in YAWS_30]
        assert len({v["caption"] for v in r["views"]}) > 1  # the views differ
    res = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert "0 done, 2 skipped, 1 failed" in res.output
    # Library call without --augment: empty view lists.
    s = run_metadata_job(png, tmp_path / "g.jsonl", src / "scenes.jsonl", CaptionSettings(), progress=False)
    assert s.done == 2 and all(r.get("views", []) == [] for r in _lines(tmp_path / "g.jsonl"))


def test_resume_redoes_changed_images_and_settings(tmp_path, no_weights):
    """A record is reused only for the same image content and the same settings / scene record."""
    from opama_tools.data.caption import run_metadata_job

    d = tmp_path / "png"
    d.mkdir()
    recs = []
    for k in range(3):
        sc = make_scene(k)
        _tonemapped_png(render_equirect(sc, 8, 16, supersample=1), d / f"synth_{k:04d}.png")
        recs.append({"image": f"synth_{k:04d}.exr", "seed": k, "kind": sc.kind, "caption": sc.description,
                     "scene": sc.to_dict()})
    scenes = tmp_path / "scenes.jsonl"
    scenes.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "c.jsonl"
    st = CaptionSettings(augment=True, stride=90)
    assert run_metadata_job(d, out, scenes, st, progress=False).done == 3
    first = {r["image"]: r for r in _lines(out)}
    assert all(len(r["source"]) == 64 and len(r["settings"]) == 16 for r in first.values())
    s = run_metadata_job(d, out, scenes, st, progress=False)
    assert (s.done, s.skipped) == (0, 3)
    # new content under the same name: redone, its old line removed (one line per image)
    _tonemapped_png(render_equirect(make_scene(7), 8, 16, supersample=1), d / "synth_0001.png")
    s = run_metadata_job(d, out, scenes, st, progress=False)
    assert (s.done, s.skipped) == (1, 2)
    assert sorted(r["image"] for r in _lines(out)) == ["synth_0000.png", "synth_0001.png", "synth_0002.png"]
    # a changed scene record: only that panorama is redone
    recs[2]["caption"] = "a different caption"
    scenes.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = run_metadata_job(d, out, scenes, st, progress=False)
    assert (s.done, s.skipped) == (1, 2)
    assert {r["image"]: r["caption"] for r in _lines(out)}["synth_0002.png"] == "a different caption"
    # other settings: everything redone
    s = run_metadata_job(d, out, scenes, CaptionSettings(augment=True, stride=45), progress=False)
    assert (s.done, s.skipped) == (3, 0)
    assert all(len(r["views"]) == 8 for r in _lines(out)) and len(_lines(out)) == 3


def test_run_caption_checks_inputs_then_runs(tmp_path, no_weights):
    """The library entry point of `opama caption`: one-line ValueErrors, nothing written; then the job."""
    from opama_tools.data.caption import run_caption
    from opama_tools.weights import MissingWeightsError

    d = tmp_path / "png"
    d.mkdir()
    sc = make_scene(3)
    _tonemapped_png(render_equirect(sc, 8, 16, supersample=1), d / "synth_0003.png")
    scenes = tmp_path / "scenes.jsonl"
    scenes.write_text(json.dumps({"image": "synth_0003.exr", "seed": 3, "kind": sc.kind,
                                  "caption": sc.description, "scene": sc.to_dict()}) + "\n")
    out = tmp_path / "c.jsonl"
    with pytest.raises(ValueError, match="nope: not a folder"):
        run_caption(tmp_path / "nope", out, scenes=scenes, progress=False)
    with pytest.raises(ValueError, match="missing.jsonl: scenes file not found"):
        run_caption(d, out, scenes=tmp_path / "missing.jsonl", progress=False)
    with pytest.raises(MissingWeightsError):
        run_caption(d, out, progress=False)  # no BLIP on this machine
    assert not out.exists()
    s = run_caption(d, out, CaptionSettings(augment=True, stride=180), scenes=scenes, progress=False)
    assert (s.done, s.exit_code) == (1, 0)
    rec = _lines(out)[0]
    assert rec["caption"] == sc.description and [v["yaw"] for v in rec["views"]] == [0, 180]
