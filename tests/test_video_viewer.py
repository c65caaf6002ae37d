"""The 360-degree video viewer (``index.html`` beside ``pano.mp4``) and the look-around of a panorama video."""

import html
import json
import re
import subprocess

import numpy as np
import pytest

from test_outpaint import _chromium  # the same skip as the panorama viewer's test

from opama_tools.outpaint.video import perspective_views, write_look_around_video
from opama_tools.outpaint.viewer import video_viewer_html, write_video_viewer
from opama_tools.videos import VideoWriter, read_frames

H, W, T, FPS = 64, 128, 20, 10


def _clip_frames():
    """T equirect frames: a grey-blue gradient, a white bar moving right (yaw -34 -> +21 degrees) in front."""
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([40 + xx * 60 // W, 60 + yy * 80 // H, np.full_like(xx, 120)], -1).astype(np.uint8)
    frames = []
    for t in range(T):
        f = base.copy()
        c = 52 + t
        f[8:H - 8, c:c + 6] = 250
        frames.append(f)
    return frames


def _write_clip(path, frames):
    with VideoWriter(path, FPS) as w:
        for f in frames:
            w.append(f)


def _bar(row):
    """Centre (pixels) of the bright bar in one canvas row."""
    cols = np.flatnonzero(np.asarray(row) > 200)
    assert cols.size, "no bright bar in the row"
    return cols.mean() + 0.5


def _read(path):
    return list(read_frames(path))


# Test-only probe appended to the page: a snapshot of the rendered canvas (statistics and its middle row) once
# the video has a frame on screen, and a second one once the white bar on the canvas has moved (another frame),
# each with the video's state. (Headless Chromium presents video frames late and irregularly, so the probe
# waits for a change rather than for a time.)
_PROBE = """<pre id="probe"></pre><script>
(function () {
  const v = document.getElementById("src"), cv = document.getElementById("view"), shots = [];
  function bar(row) {    // centre of the bright run
    let n = 0, s = 0;
    row.forEach((x, j) => { if (x > 200) { n++; s += j; } });
    return n ? s / n : -1;
  }
  function snap() {
    const d = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data, n = d.length / 4;
    let s = 0, s2 = 0;
    for (let i = 0; i < d.length; i += 4) { const y = (d[i] + d[i + 1] + d[i + 2]) / 3; s += y; s2 += y * y; }
    const row = [], r = Math.floor(cv.height / 2) * cv.width * 4;
    for (let j = 0; j < cv.width; j++) row.push((d[r + 4 * j] + d[r + 4 * j + 1] + d[r + 4 * j + 2]) / 3);
    return { time: v.currentTime, readyState: v.readyState, paused: v.paused, frames: +document.body.dataset.frames,
             mean: s / n, std: Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)), row };
  }
  function poll() {
    if (!shots.length) {
      if (v.readyState >= 2 && +(document.body.dataset.frames || 0) >= 1) shots.push(snap());
    } else {
      const s = snap();
      if (Math.abs(bar(s.row) - bar(shots[0].row)) > 0.02 * s.row.length) {
        shots.push(s);
        document.getElementById("probe").textContent = JSON.stringify(shots);
        return;
      }
    }
    setTimeout(poll, 20);
  }
  poll();
})();
</script></body>"""

# Test-only probe that reads no pixels (a page opened from disk cannot): the viewer's state (``<body>``'s data
# attributes) at each poll, and the most repaints and the latest playing time seen, until two video frames have been
# repainted and the video has played past 0.2 s. (On a loaded machine headless Chromium may stop the page's virtual
# time before that: the test then asks only for two repaints and a playing time above zero.)
_STATE_PROBE = """<pre id="probe"></pre><script>
(function () {
  let frames = 0, time = 0;
  (function poll() {
    const d = document.body.dataset;
    frames = Math.max(frames, +(d.frames || 0));
    if (d.paused === "false") time = Math.max(time, +(d.currentTime || 0), +(d.frameTime || 0));
    document.getElementById("probe").textContent = JSON.stringify({ frames, time, state: d });
    if (frames < 2 || time <= 0.2) setTimeout(poll, 20);
  })();
})();
</script></body>"""


def _run_page(page, *flags, budget=40000):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=320,200",
           "--autoplay-policy=no-user-gesture-required", *flags, f"--virtual-time-budget={budget}", "--dump-dom",
           page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=page.parent)
    return res.stdout


def _probe(page, *flags, enough, attempts=3):
    """The probe's JSON from ``page``; the page is run again (up to ``attempts`` times) while
    ``enough(result)`` is false: how far headless Chromium plays a video before its virtual-time budget
    ends varies with the machine's load, so one short run is retried, not failed."""
    for _ in range(attempts):
        dom = _run_page(page, *flags)
        m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
        assert m and m.group(1), f"the probe recorded nothing: {dom[-2000:]}"
        got = json.loads(html.unescape(m.group(1)))
        if enough(got):
            break
    return got, dom


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (CI installs it: .ci/run)")
def test_video_viewer_plays_in_headless_chromium(tmp_path):
    frames = _clip_frames()
    _write_clip(tmp_path / "pano.mp4", frames)
    write_video_viewer(tmp_path / "index.html", poster=frames[0])
    page = (tmp_path / "index.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE))
    # reading the canvas back needs the video same-origin: file:// pages are not, unless this flag is given
    shots, _ = _probe(probe, "--allow-file-access-from-files", enough=lambda shots: len(shots) == 2)
    assert len(shots) == 2, shots  # the canvas showed another frame: it plays
    for s in shots:
        assert s["readyState"] >= 2 and not s["paused"] and s["frames"] >= 1, s
        assert s["std"] > 10 and s["mean"] > 40, s  # not blank: gradient and bar
    a, b = (np.array(s["row"]) for s in shots)
    assert shots[1]["time"] != shots[0]["time"] and shots[1]["frames"] > shots[0]["frames"]
    # the white bar (centre of the bright run of the middle row) sits where one of the clip's frames puts it:
    # frame t at yaw (55 + t - 64) * 360/128 degrees, seen with a 90 degree fov over the canvas width w;
    # the two snapshots show different frames
    w = len(a)
    xs = w / 2 * (1 + np.tan(np.radians((55 + np.arange(T) - W / 2) * 360 / W)))
    ta, tb = (int(np.argmin(np.abs(xs - _bar(row)))) for row in (a, b))
    assert abs(_bar(a) - xs[ta]) < 0.015 * w and abs(_bar(b) - xs[tb]) < 0.015 * w, (_bar(a), _bar(b), xs)
    assert ta != tb


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (CI installs it: .ci/run)")
def test_video_viewer_plays_from_disk_and_shows_the_poster(tmp_path):
    frames = _clip_frames()
    _write_clip(tmp_path / "pano.mp4", frames)
    write_video_viewer(tmp_path / "index.html", poster=frames[0])
    # as opened from disk (no flag): the renderer never reads pixels back, so the cross-origin video still plays
    page = tmp_path / "state.html"
    page.write_text((tmp_path / "index.html").read_text().replace("</body>", _STATE_PROBE))
    got, dom = _probe(page, enough=lambda got: got["frames"] >= 2 and got["time"] > 0.2)
    # a blocked (cross-origin) or failed video never repaints and never plays: frames stay at 0 or 1, time at 0
    assert got["frames"] >= 2 and got["time"] > 0 and got["state"]["ready"] == "1", got
    hud = re.search(r'<div id="hud">(.*?)</div>', dom, re.S)
    assert hud and "could not play" not in hud.group(1), hud
    # a missing video: the poster is drawn (the bar of frame 0 near yaw -3 degrees), the HUD says what failed
    write_video_viewer(tmp_path / "missing.html", "missing.mp4", poster=frames[0])
    probe = tmp_path / "probe.html"
    probe.write_text((tmp_path / "missing.html").read_text().replace(
        "</body>", "<pre id='probe'></pre><script>setTimeout(() => { const c = document.getElementById('view');"
        " const d = c.getContext('2d').getImageData(0, c.height >> 1, c.width, 1).data, r = [];"
        " for (let j = 0; j < c.width; j++) r.push(d[4 * j + 1]); document.getElementById('probe').textContent ="
        " JSON.stringify(r); }, 2000);</script></body>"))
    dom = _run_page(probe, "--allow-file-access-from-files", budget=4000)
    assert "could not play missing.mp4" in dom
    row = np.array(json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    x = len(row) / 2 * (1 + np.tan(np.radians((55 - W / 2) * 360 / W)))
    assert abs(_bar(row) - x) < 0.02 * len(row), (_bar(row), x)


def test_video_viewer_html_references_only_the_video(tmp_path):
    poster = _clip_frames()[0]
    page = video_viewer_html("pano.mp4", "a <test> & title", poster=poster)
    assert "<title>a &lt;test&gt; &amp; title</title>" in page
    urls = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)["\']', page) + re.findall(r"url\(([^)]*)\)", page)
    assert urls == ["pano.mp4"], urls
    assert len(re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", page)) == 1  # the poster, inline
    code = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(https?:)?//[a-z0-9]|\bimport\b|fetch\(|XMLHttpRequest", code, re.I)
    assert "function opamaViewer" in page and page.count("function opamaViewer") == 1
    assert "const POSTER = null;" in video_viewer_html()
    out = write_video_viewer(tmp_path / "v" / "index.html", "my clip.mp4")
    assert 'src="my%20clip.mp4"' in out.read_text()


def test_look_around_video_cuts_frame_t_at_its_yaw(tmp_path):
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(12):  # smooth, distinct panoramas (H.264 keeps them close)
        f = np.stack([128 + 100 * np.sin(2 * np.pi * (xx / W + t / 12)), 128 + 80 * np.cos(np.pi * yy / H),
                      np.full_like(xx, 40 + 15 * t, dtype=float)], -1)
        frames.append((f + rng.rand(1, 1, 3)).clip(0, 255).astype(np.uint8))
    out = write_look_around_video(tmp_path / "look.mp4", iter(frames), FPS, n_frames=12, size=(48, 64), fov=80.0)
    got = _read(out)
    assert len(got) == 12 and all(g.shape == (48, 64, 3) for g in got)
    for t in range(12):
        want = next(perspective_views(frames[t], [360.0 * t / 12], (48, 64), 80.0)).astype(int)
        err = np.abs(got[t].astype(int) - want).mean()
        assert err < 3, (t, err)  # H.264 at CRF 18 with 4:2:0 chroma: ~1.6 levels here
        # and not another frame's cut or another yaw
        other = next(perspective_views(frames[(t + 6) % 12], [360.0 * t / 12], (48, 64), 80.0)).astype(int)
        turned = next(perspective_views(frames[t], [360.0 * t / 12 + 60], (48, 64), 80.0)).astype(int)
        assert np.abs(got[t].astype(int) - other).mean() > 3 * err + 5
        assert np.abs(got[t].astype(int) - turned).mean() > 3 * err + 5


def test_look_around_video_bad_input_writes_nothing(tmp_path):
    frames = _clip_frames()[:3]
    with pytest.raises(ValueError, match="n_frames"):
        write_look_around_video(tmp_path / "a.mp4", iter(frames), FPS)
    with pytest.raises(ValueError, match="expected 5"):
        write_look_around_video(tmp_path / "a.mp4", iter(frames), FPS, n_frames=5, size=(16, 16))
    with pytest.raises(ValueError, match="turns"):
        write_look_around_video(tmp_path / "a.mp4", frames, FPS, turns=0.5)
    assert list(tmp_path.iterdir()) == []
    write_look_around_video(tmp_path / "a.mp4", frames, FPS, size=(16, 32))  # len() gives n_frames
    assert len(_read(tmp_path / "a.mp4")) == 3


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (CI installs it: .ci/run)")
@pytest.mark.parametrize("view", [(0, 0, 90), (180, 0, 90), (30, 80, 120), (-100, -60, 60)])
def test_viewer_renders_the_perspective_view(tmp_path, view):
    """The shared renderer (here on a panorama page) shows what equi_to_pers cuts: across the seam, near a pole."""
    import base64
    import io

    from PIL import Image

    from opama_tools.outpaint.viewer import write_viewer

    yy, xx = np.mgrid[0:256, 0:512] + 0.5
    lon, lat = (xx / 512 - 0.5) * 2 * np.pi, (0.5 - yy / 256) * np.pi
    pano = np.stack([128 + 90 * np.sin(lon) * np.cos(lat), 128 + 50 * np.sin(2 * lat) + 60 * np.sin(8 * lon) * np.cos(lat),
                     128 + 90 * np.cos(lon + 1) * np.cos(lat)], -1).round().astype(np.uint8)
    write_viewer(tmp_path / "index.html", pano)
    yaw, pitch, fov = view
    page = tmp_path / "probe.html"
    page.write_text((tmp_path / "index.html").read_text().replace(
        "</body>", "<pre id='probe'></pre><script>(function poll() { if (document.body.dataset.ready)"
        " document.getElementById('probe').textContent = document.getElementById('view').toDataURL();"
        " else setTimeout(poll, 20); })();</script></body>"))
    res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=320,200",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri() + f"?yaw={yaw}&pitch={pitch}&fov={fov}"],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">data:image/png;base64,([^<]+)</pre>', res.stdout)
    assert m, res.stdout[-2000:]
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))).convert("RGB")).astype(int)
    want = next(perspective_views(pano, [yaw], got.shape[:2], fov, pitch)).astype(int)
    err = np.abs(got - want)
    assert err.mean() < 1.5 and np.percentile(err, 99) < 6, (err.mean(), np.percentile(err, 99))
    for off in ((2, 0, 0), (0, 2, 0), (0, 0, 4)):  # a view 2 degrees off (or 4 degrees wider) would show
        y, p, f = yaw + off[0], pitch + off[1], fov + off[2]
        other = next(perspective_views(pano, [y], got.shape[:2], f, p)).astype(int)
        assert np.abs(got - other).mean() > 2 * err.mean(), off
