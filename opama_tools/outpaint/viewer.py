"""``index.html``: self-contained, drag-to-look 360-degree viewers of a panorama and of a panorama video.

One renderer serves both pages (:data:`_VIEWER_JS`): a pinhole camera (horizontal ``fov``, turned by pitch
then yaw, degrees; yaw right, pitch up, as everywhere in opama) on a 2D canvas, no WebGL (so it also renders
in headless browsers). The screen is cut into small triangles; each triangle's corners are rays looked up
in the equirect, and the source triangle is drawn onto the screen with the affine map between them
(``drawImage`` through a clip). A triangle is split in four while that map is off by more than ~0.75 screen
pixel at an edge's middle (near the poles); triangles across the +-180 degree seam draw the source twice,
one width apart. Nothing reads pixels back, so the renderer also works on a ``<video>`` that the browser
treats as cross-origin, as it does any video of a ``file://`` page opened from disk (a per-pixel lookup
through ``getImageData`` or a WebGL texture would be refused there).

Drag (mouse or one finger) to look around, wheel or two-finger pinch or ``+``/``-`` to zoom, arrow keys to
turn. ``index.html?yaw=90&pitch=10&fov=75`` opens at that direction.

* :func:`viewer_html` / :func:`write_viewer`: one panorama, embedded as a JPEG data URI (no other file).
* :func:`video_viewer_html` / :func:`write_video_viewer`: plays the equirect MP4 beside the page (looped,
  muted), with play/pause (button or space) and the time; an optional poster (a small inline JPEG) is shown
  until the video has a frame. The ``<video>`` itself stays on screen as a small map of the whole equirect
  frame (a hidden video may be paused or not decoded by the browser).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

from opama_tools.io import atomic_write_text

__all__ = ["video_viewer_html", "viewer_html", "write_video_viewer", "write_viewer"]

# The shared renderer and controls. ``opamaViewer(canvas, hud, source, hudSuffix)``: ``source()`` returns
# ``[element, width, height]`` (an <img>, <video> or <canvas> showing the 2:1 equirect) or null; the
# returned object's ``draw()`` repaints (call it per video frame), ``redraw()`` repaints on the next frame.
_VIEWER_JS = r"""
function opamaViewer(cv, hud, source, hudSuffix) {
  const ctx = cv.getContext("2d");
  const q = new URLSearchParams(location.search);
  let yaw = +(q.get("yaw") || 0), pitch = +(q.get("pitch") || 0), fov = +(q.get("fov") || 90);
  let pending = false, mesh = null, meshKey = "";
  const R = Math.PI / 180, FOV_MIN = 20, FOV_MAX = 130;

  // Triangles of the current view: screen corners and the affine map source pixel -> screen pixel.
  function buildMesh(w, h, sw, sh) {
    const f = Math.tan(fov * R / 2) / ((w - 1) / 2);     // image-plane units per pixel (fov spans the end pixels' centres)
    const cy = Math.cos(yaw * R), sy = Math.sin(yaw * R), cp = Math.cos(pitch * R), sp = Math.sin(pitch * R);
    function uv(px, py) {                                 // screen point (pixel edges) -> equirect (u, v) in pixels
      const x = (px - w / 2) * f, y = (h / 2 - py) * f;
      const y2 = y * cp + sp, z2 = -y * sp + cp;          // pitch (about x), z = 1
      const x3 = x * cy + z2 * sy, z3 = -x * sy + z2 * cy; // yaw (about y)
      const lon = Math.atan2(x3, z3), lat = Math.atan2(y2, Math.hypot(x3, z3));
      return [(lon / (2 * Math.PI) + 0.5) * sw, (0.5 - lat / Math.PI) * sh];
    }
    const tris = [], tol = 0.75 * fov / w;  // degrees: ~0.75 screen pixels
    const near = (u, ref) => u - ref > sw / 2 ? u - sw : (ref - u > sw / 2 ? u + sw : u);  // unwrap the seam
    const mid = (a, b) => {
      const x = (a[0] + b[0]) / 2, y = (a[1] + b[1]) / 2, s = uv(x, y);
      return [x, y, s[0], s[1]];
    };
    function add(p0, p1, p2, depth) {
      const u1 = near(p1[2], p0[2]), u2 = near(p2[2], p0[2]);
      const ma = mid(p0, p1), mb = mid(p1, p2), mc = mid(p2, p0);
      // split into four while the affine map is off by more than tol (degrees on the sphere) at an edge's middle
      const off = (m, ua, va, ub, vb) => Math.hypot(
        (near(m[2], p0[2]) - (ua + ub) / 2) * 360 / sw * Math.cos((0.5 - m[3] / sh) * Math.PI),
        (m[3] - (va + vb) / 2) * 180 / sh);
      const err = Math.max(off(ma, p0[2], p0[3], u1, p1[3]), off(mb, u1, p1[3], u2, p2[3]),
                           off(mc, u2, p2[3], p0[2], p0[3]));
      if (err > tol && depth < 6) {
        add(p0, ma, mc, depth + 1); add(ma, p1, mb, depth + 1); add(mc, mb, p2, depth + 1); add(ma, mb, mc, depth + 1);
        return;
      }
      const lo = Math.min(p0[2], u1, u2), hi = Math.max(p0[2], u1, u2);
      const du1 = u1 - p0[2], dv1 = p1[3] - p0[3], du2 = u2 - p0[2], dv2 = p2[3] - p0[3];
      const det = du1 * dv2 - du2 * dv1;
      if (Math.abs(det) < 1e-9) return;
      const dx1 = p1[0] - p0[0], dy1 = p1[1] - p0[1], dx2 = p2[0] - p0[0], dy2 = p2[1] - p0[1];
      const a = (dx1 * dv2 - dx2 * dv1) / det, c = (dx2 * du1 - dx1 * du2) / det;
      const b = (dy1 * dv2 - dy2 * dv1) / det, d = (dy2 * du1 - dy1 * du2) / det;
      const e = p0[0] - a * p0[2] - c * p0[3], g = p0[1] - b * p0[2] - d * p0[3];
      // the clip's edges move 0.6 px outwards (scaled about the incentre), so neighbours overlap: no hairlines
      const la = Math.hypot(p1[0] - p2[0], p1[1] - p2[1]), lb = Math.hypot(p2[0] - p0[0], p2[1] - p0[1]);
      const lc = Math.hypot(p0[0] - p1[0], p0[1] - p1[1]), per = la + lb + lc;
      if (per < 1e-6) return;
      const ix = (la * p0[0] + lb * p1[0] + lc * p2[0]) / per, iy = (la * p0[1] + lb * p1[1] + lc * p2[1]) / per;
      const r = Math.abs(dx1 * dy2 - dx2 * dy1) / per, k = Math.min(4, 1 + 0.6 / Math.max(r, 1e-6));
      const clip = [p0, p1, p2].map(p => [ix + (p[0] - ix) * k, iy + (p[1] - iy) * k]);
      const shifts = [0];
      if (lo < 0) shifts.push(-sw);
      if (hi > sw) shifts.push(sw);
      tris.push({ clip, m: [a, b, c, d, e, g], shifts });
    }
    const n = Math.max(8, Math.round(w / 24)), k = Math.max(4, Math.round(h * n / w));
    const pts = [];
    for (let i = 0; i <= k; i++) {
      for (let j = 0; j <= n; j++) {
        const x = j * w / n, y = i * h / k, s = uv(x, y);
        pts.push([x, y, s[0], s[1]]);
      }
    }
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < n; j++) {
        const p00 = pts[i * (n + 1) + j], p01 = pts[i * (n + 1) + j + 1];
        const p10 = pts[(i + 1) * (n + 1) + j], p11 = pts[(i + 1) * (n + 1) + j + 1];
        add(p00, p01, p11, 0); add(p00, p11, p10, 0);
      }
    }
    return tris;
  }

  function draw() {
    pending = false;
    const s = source();
    if (!s || !s[1] || !s[2]) return false;
    const [el, sw, sh] = s, w = cv.width, h = cv.height;
    const key = [w, h, sw, sh, yaw, pitch, fov].join();
    if (key !== meshKey) { mesh = buildMesh(w, h, sw, sh); meshKey = key; }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, w, h);
    for (const t of mesh) {
      ctx.save();
      ctx.beginPath();
      ctx.moveTo(t.clip[0][0], t.clip[0][1]);
      ctx.lineTo(t.clip[1][0], t.clip[1][1]);
      ctx.lineTo(t.clip[2][0], t.clip[2][1]);
      ctx.closePath();
      ctx.clip();
      const m = t.m;
      for (const dx of t.shifts) {
        ctx.setTransform(m[0], m[1], m[2], m[3], m[4] + m[0] * dx, m[5] + m[1] * dx);
        ctx.drawImage(el, 0, 0, sw, sh);
      }
      ctx.restore();
    }
    hud.textContent = "yaw " + yaw.toFixed(0) + "\u00b0  pitch " + pitch.toFixed(0) + "\u00b0  fov " +
      fov.toFixed(0) + "\u00b0  \u2014 drag to look around, wheel or pinch to zoom" + (hudSuffix ? hudSuffix() : "");
    document.body.dataset.ready = "1";
    document.body.dataset.triangles = mesh.length;
    return true;
  }
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(draw); } }
  function resize() {
    const s = Math.min(1, 960 / Math.max(window.innerWidth, 1));
    cv.width = Math.max(2, Math.round(window.innerWidth * s));
    cv.height = Math.max(2, Math.round(window.innerHeight * s));
    draw();
  }
  function turn(dyaw, dpitch) {
    yaw = ((yaw + dyaw + 540) % 360) - 180;
    pitch = Math.max(-89.9, Math.min(89.9, pitch + dpitch));
    redraw();
  }
  function zoom(factor) { fov = Math.max(FOV_MIN, Math.min(FOV_MAX, fov * factor)); redraw(); }
  // one pointer drags (mouse or finger), two pinch
  const down = new Map();
  let pinch = 0;
  const spread = () => { const [a, b] = [...down.values()]; return Math.hypot(a[0] - b[0], a[1] - b[1]); };
  cv.addEventListener("pointerdown", e => {
    down.set(e.pointerId, [e.clientX, e.clientY]); cv.setPointerCapture(e.pointerId); cv.classList.add("drag");
    if (down.size === 2) pinch = spread();
  });
  cv.addEventListener("pointermove", e => {
    const last = down.get(e.pointerId);
    if (!last) return;
    if (down.size === 1) {
      const k = fov / Math.max(cv.clientWidth, 1);
      turn(-(e.clientX - last[0]) * k, (e.clientY - last[1]) * k);
    }
    down.set(e.pointerId, [e.clientX, e.clientY]);
    if (down.size === 2) { const d = spread(); if (pinch > 0 && d > 0) zoom(pinch / d); pinch = d; }
  });
  const up = e => {
    down.delete(e.pointerId);
    pinch = down.size === 2 ? spread() : 0;
    if (!down.size) cv.classList.remove("drag");
  };
  cv.addEventListener("pointerup", up);
  cv.addEventListener("pointercancel", up);
  cv.addEventListener("wheel", e => { e.preventDefault(); zoom(Math.exp(e.deltaY * 0.001)); }, { passive: false });
  window.addEventListener("keydown", e => {
    const k = { ArrowLeft: [-5, 0], ArrowRight: [5, 0], ArrowUp: [0, 5], ArrowDown: [0, -5] }[e.key];
    if (k) { e.preventDefault(); turn(k[0], k[1]); }
    if (e.key === "+" || e.key === "=") zoom(1 / 1.1);
    if (e.key === "-") zoom(1.1);
  });
  window.addEventListener("resize", resize);
  return { draw, redraw, resize };
}
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; background: #111; overflow: hidden; }
canvas { width: 100%; height: 100%; display: block; cursor: grab; touch-action: none; }
canvas.drag { cursor: grabbing; }
#hud { position: fixed; left: 8px; bottom: 8px; color: #ddd; font: 12px sans-serif;
       background: rgba(0, 0, 0, .45); padding: 4px 6px; border-radius: 3px; }
#bar { position: fixed; right: 8px; bottom: 8px; color: #ddd; font: 12px monospace; display: flex; gap: 6px;
       align-items: center; background: rgba(0, 0, 0, .45); padding: 3px 6px; border-radius: 3px; }
#bar button { font: 12px sans-serif; min-width: 4.5em; }
#src { position: fixed; right: 8px; top: 8px; width: 160px; height: 80px; opacity: .8; pointer-events: none;
       border: 1px solid rgba(255, 255, 255, .4); background: #000; }
</style></head>
<body><canvas id="view"></canvas><div id="hud">loading...</div>__BODY__
<script>
"use strict";
__VIEWER__
__MAIN__
</script></body></html>
"""

_IMAGE_MAIN = """const PANO = "__DATA__";
(function () {
  const img = new Image();
  const v = opamaViewer(document.getElementById("view"), document.getElementById("hud"),
                        () => img.naturalWidth ? [img, img.naturalWidth, img.naturalHeight] : null);
  img.onload = () => v.resize();
  img.onerror = () => { document.getElementById("hud").textContent = "could not decode the embedded panorama"; };
  img.src = PANO;
})();
"""

_VIDEO_BODY = """
<div id="bar"><button id="play" type="button">pause</button><span id="time">0:00.0 / 0:00.0</span></div>
<video id="src" src="__VIDEO__" muted loop autoplay playsinline preload="auto"></video>"""

_VIDEO_MAIN = """const POSTER = __POSTER__;
(function () {
  const video = document.getElementById("src"), btn = document.getElementById("play");
  const time = document.getElementById("time"), hud = document.getElementById("hud");
  const poster = new Image();
  let frames = 0, frameTime = 0;
  const fmt = s => { s = isFinite(s) ? s : 0; const m = Math.floor(s / 60), r = s - 60 * m;
                     return m + ":" + (r < 10 ? "0" : "") + r.toFixed(1); };
  function source() {
    if (video.readyState >= 2 && video.videoWidth) return [video, video.videoWidth, video.videoHeight];
    if (poster.naturalWidth) return [poster, poster.naturalWidth, poster.naturalHeight];
    return null;
  }
  let note = "";                         // a playback problem, kept on the HUD
  const v = opamaViewer(document.getElementById("view"), hud, source, () => note);
  function show() {
    time.textContent = fmt(video.currentTime) + " / " + fmt(video.duration);
    btn.textContent = video.paused ? "play" : "pause";
    const d = document.body.dataset;
    d.currentTime = video.currentTime.toFixed(3); d.readyState = video.readyState; d.paused = video.paused;
    d.frames = frames; d.frameTime = frameTime.toFixed(3);
  }
  // repaint every animation frame while playing (requestVideoFrameCallback would be leaner, but headless
  // Chromium calls it once only)
  let looping = false;
  function frame() {
    looping = false;
    if (v.draw() && video.readyState >= 2) { frames++; frameTime = video.currentTime; }
    show();
    loop();
  }
  function loop() {
    if (looping || video.paused) return;
    looping = true;
    requestAnimationFrame(frame);
  }
  function toggle() { if (video.paused) video.play().catch(() => {}); else video.pause(); }
  btn.addEventListener("click", toggle);
  window.addEventListener("keydown", e => { if (e.key === " ") { e.preventDefault(); toggle(); } });
  video.addEventListener("play", loop);
  for (const ev of ["pause", "seeked", "loadeddata", "durationchange"]) video.addEventListener(ev, () => {
    if (v.draw() && video.readyState >= 2) frameTime = video.currentTime;
    show();
  });
  video.addEventListener("error", () => {
    note = "  \u2014 could not play " + video.getAttribute("src");
    if (!v.draw()) hud.textContent = note;
  });
  poster.onload = () => v.resize();
  if (POSTER) poster.src = POSTER;
  v.resize();
  loop();
  video.play().catch(() => {
    if (!video.error) note = "  \u2014 press play (the browser blocked autoplay)";
    if (!v.draw()) hud.textContent = note;
    show();
  });
})();
"""


def _jpeg_data_uri(image: np.ndarray, quality: int, max_width: int) -> str:
    img = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    if img.width > max_width:
        img = img.resize((max_width, max(1, round(max_width * img.height / img.width))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _page(title: str, body: str, main: str) -> str:
    parts = {"TITLE": html.escape(title), "BODY": body, "VIEWER": _VIEWER_JS.strip(), "MAIN": main}
    return re.sub(r"__(TITLE|BODY|VIEWER|MAIN)__", lambda m: parts[m.group(1)], _PAGE)


def viewer_html(panorama: np.ndarray, title: str = "opama panorama", *, quality: int = 92,
                max_width: int = 4096) -> str:
    """The viewer page for ``panorama`` (uint8 ``(H, W, 3)``, 2:1 equirect) as one HTML string.

    The panorama is embedded as a JPEG (``quality``), shrunk to ``max_width`` if wider.
    """
    return _page(title, "", _IMAGE_MAIN.replace("__DATA__", _jpeg_data_uri(panorama, quality, max_width)))


def write_viewer(path: str | Path, panorama: np.ndarray, title: str = "opama panorama") -> Path:
    """Write :func:`viewer_html` atomically to ``path``."""
    atomic_write_text(path, viewer_html(panorama, title))
    return Path(path)


def video_viewer_html(video_name: str = "pano.mp4", title: str = "opama 360 video", *,
                      poster: np.ndarray | None = None, poster_width: int = 1024, quality: int = 85) -> str:
    """The video viewer page as one HTML string: it plays ``video_name`` (a 2:1 equirect MP4, relative to the page).

    ``poster`` (uint8 ``(H, W, 3)``, usually frame 0) is embedded as a JPEG at most ``poster_width`` wide and
    shown until the video has a frame. The page references no file but ``video_name`` and no network.
    While it runs, ``<body>`` carries ``data-current-time``, ``data-ready-state``, ``data-paused`` and
    ``data-frames`` (repaints of a video frame) and ``data-frame-time`` (the media time of the frame on screen, s).
    """
    poster_uri = json.dumps(_jpeg_data_uri(poster, quality, poster_width)) if poster is not None else "null"
    body = _VIDEO_BODY.replace("__VIDEO__", html.escape(urllib.parse.quote(video_name), quote=True))
    return _page(title, body, _VIDEO_MAIN.replace("__POSTER__", poster_uri))


def write_video_viewer(path: str | Path, video_name: str = "pano.mp4", title: str = "opama 360 video", *,
                       poster: np.ndarray | None = None) -> Path:
    """Write :func:`video_viewer_html` atomically to ``path`` (put the video beside it as ``video_name``)."""
    atomic_write_text(path, video_viewer_html(video_name, title, poster=poster))
    return Path(path)
