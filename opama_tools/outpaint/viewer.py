"""``index.html``: a self-contained, drag-to-look 360-degree viewer of one panorama.

No network and no external file: the panorama is embedded as a JPEG data URI and the viewer
is inline JavaScript on a 2D canvas (no WebGL, so it also renders in headless browsers).
Each screen pixel is a ray of a pinhole camera (horizontal ``fov``), turned by pitch then
yaw (degrees; yaw right, pitch up, as everywhere in opama) and looked up (nearest) in the
equirect. Drag to look around, wheel / pinch-free ``+``/``-`` keys to zoom, arrow keys to turn.
``index.html?yaw=90&pitch=10&fov=75`` opens at that direction.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from opama_tools.io import atomic_write_text

__all__ = ["viewer_html", "write_viewer"]

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; background: #111; overflow: hidden; }
canvas { width: 100%; height: 100%; display: block; cursor: grab; touch-action: none; }
canvas.drag { cursor: grabbing; }
#hud { position: fixed; left: 8px; bottom: 8px; color: #ddd; font: 12px sans-serif;
       background: rgba(0, 0, 0, .45); padding: 4px 6px; border-radius: 3px; }
</style></head>
<body><canvas id="view"></canvas><div id="hud">loading...</div>
<script>
"use strict";
const PANO = "__DATA__";
(function () {
  const cv = document.getElementById("view"), ctx = cv.getContext("2d");
  const hud = document.getElementById("hud");
  const q = new URLSearchParams(location.search);
  let yaw = +(q.get("yaw") || 0), pitch = +(q.get("pitch") || 0), fov = +(q.get("fov") || 90);
  let src = null, sw = 0, sh = 0, pending = false;
  const R = Math.PI / 180;

  function draw() {
    pending = false;
    if (!src) return;
    const w = cv.width, h = cv.height, out = ctx.createImageData(w, h), d = out.data;
    const f = Math.tan(fov * R / 2) / ((w - 1) / 2);   // image-plane units per pixel
    const cy = Math.cos(yaw * R), sy = Math.sin(yaw * R), cp = Math.cos(pitch * R), sp = Math.sin(pitch * R);
    let o = 0;
    for (let i = 0; i < h; i++) {
      const y = ((h - 1) / 2 - i) * f;
      const y2 = y * cp + sp, z2 = -y * sp + cp;        // pitch (about x), z = 1
      for (let j = 0; j < w; j++) {
        const x = (j - (w - 1) / 2) * f;
        const x3 = x * cy + z2 * sy, z3 = -x * sy + z2 * cy;   // yaw (about y)
        const lon = Math.atan2(x3, z3), lat = Math.atan2(y2, Math.hypot(x3, z3));
        let c = Math.floor((lon / (2 * Math.PI) + 0.5) * sw); c = ((c % sw) + sw) % sw;
        let r = Math.floor((0.5 - lat / Math.PI) * sh); r = r < 0 ? 0 : (r >= sh ? sh - 1 : r);
        const s = (r * sw + c) * 4;
        d[o] = src[s]; d[o + 1] = src[s + 1]; d[o + 2] = src[s + 2]; d[o + 3] = 255; o += 4;
      }
    }
    ctx.putImageData(out, 0, 0);
    hud.textContent = "yaw " + yaw.toFixed(0) + "\\u00b0  pitch " + pitch.toFixed(0) + "\\u00b0  fov " +
      fov.toFixed(0) + "\\u00b0  \\u2014 drag to look around, wheel to zoom";
    document.body.dataset.ready = "1";
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
  let last = null;
  cv.addEventListener("pointerdown", e => { last = [e.clientX, e.clientY]; cv.setPointerCapture(e.pointerId); cv.classList.add("drag"); });
  cv.addEventListener("pointermove", e => {
    if (!last) return;
    const k = fov / Math.max(cv.clientWidth, 1);
    turn(-(e.clientX - last[0]) * k, (e.clientY - last[1]) * k);
    last = [e.clientX, e.clientY];
  });
  const stop = () => { last = null; cv.classList.remove("drag"); };
  cv.addEventListener("pointerup", stop);
  cv.addEventListener("pointercancel", stop);
  cv.addEventListener("wheel", e => { e.preventDefault(); fov = Math.max(20, Math.min(130, fov * Math.exp(e.deltaY * 0.001))); redraw(); }, { passive: false });
  window.addEventListener("keydown", e => {
    const k = { ArrowLeft: [-5, 0], ArrowRight: [5, 0], ArrowUp: [0, 5], ArrowDown: [0, -5] }[e.key];
    if (k) turn(k[0], k[1]);
    if (e.key === "+" || e.key === "=") { fov = Math.max(20, fov / 1.1); redraw(); }
    if (e.key === "-") { fov = Math.min(130, fov * 1.1); redraw(); }
  });
  window.addEventListener("resize", resize);
  const img = new Image();
  img.onload = () => {
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    src = g.getImageData(0, 0, c.width, c.height).data; sw = c.width; sh = c.height;
    resize();
  };
  img.onerror = () => { hud.textContent = "could not decode the embedded panorama"; };
  img.src = PANO;
})();
</script></body></html>
"""


def viewer_html(panorama: np.ndarray, title: str = "opama panorama", *, quality: int = 92,
                max_width: int = 4096) -> str:
    """The viewer page for ``panorama`` (uint8 ``(H, W, 3)``, 2:1 equirect) as one HTML string.

    The panorama is embedded as a JPEG (``quality``), shrunk to ``max_width`` if wider.
    """
    img = Image.fromarray(np.ascontiguousarray(panorama[..., :3]))
    if img.width > max_width:
        img = img.resize((max_width, max_width // 2), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    data = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def write_viewer(path: str | Path, panorama: np.ndarray, title: str = "opama panorama") -> Path:
    """Write :func:`viewer_html` atomically to ``path``."""
    atomic_write_text(path, viewer_html(panorama, title))
    return Path(path)
