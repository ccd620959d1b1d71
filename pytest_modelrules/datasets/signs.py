"""Synthetic traffic signs: one clean template per GTSRB class, then cheap random warps.

Templates are drawn once per resolution with vectorised numpy (signed-distance style masks
on a supersampled grid, box-filtered down), as RGBA in [0, 1]. Images are made in batches:
a random affine warp (scale, small rotation, aspect, position) samples the template
bilinearly (optionally on a supersampled grid), the sign is lit (brightness, colour cast),
composited on a smooth random background with clutter rectangles, blurred and noised.
Mirror pairs are exact: the template of the second class IS the horizontally flipped
template of the first (see :data:`~pytest_modelrules.datasets.gtsrb_meta.MIRROR_PAIRS`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .gtsrb_meta import MIRROR_PAIRS, NUM_CLASSES

RED = (0.80, 0.08, 0.10)
WHITE = (0.97, 0.97, 0.97)
BLACK = (0.06, 0.06, 0.07)
BLUE = (0.08, 0.28, 0.72)
YELLOW = (0.98, 0.76, 0.05)
GREY = (0.50, 0.50, 0.52)
GREEN = (0.10, 0.65, 0.20)
ORANGE = (0.98, 0.60, 0.05)

Mask = np.ndarray


class _Canvas:
    """A square supersampled drawing surface in coordinates u (right), v (down) in [-1, 1]."""

    def __init__(self, n: int) -> None:
        c = ((np.arange(n, dtype=np.float64) + 0.5) / n) * 2.0 - 1.0
        self.u, self.v = np.meshgrid(c, c)
        self.rgb = np.zeros((n, n, 3))
        self.alpha = np.zeros((n, n))

    # -- masks ---------------------------------------------------------------------------
    def disk(self, r: float, cx: float = 0.0, cy: float = 0.0) -> Mask:
        return (self.u - cx) ** 2 + (self.v - cy) ** 2 <= r * r

    def ring(self, r: float, w: float, cx: float = 0.0, cy: float = 0.0) -> Mask:
        d = np.hypot(self.u - cx, self.v - cy)
        return np.abs(d - r) <= w / 2

    def arc(self, r: float, w: float, a0: float, a1: float, cx: float = 0.0, cy: float = 0.0):
        """Ring sector between angles a0..a1 (degrees, 0 = right, 90 = down)."""
        ang = np.degrees(np.arctan2(self.v - cy, self.u - cx)) % 360.0
        a0, a1 = a0 % 360.0, a1 % 360.0
        inside = (ang >= a0) & (ang <= a1) if a0 <= a1 else (ang >= a0) | (ang <= a1)
        return self.ring(r, w, cx, cy) & inside

    def polygon(self, pts: Sequence[tuple[float, float]]) -> Mask:
        """Even-odd point-in-polygon test, vectorised over the grid."""
        u, v = self.u, self.v
        inside = np.zeros(u.shape, dtype=bool)
        n = len(pts)
        for i in range(n):
            x0, y0 = pts[i]
            x1, y1 = pts[(i + 1) % n]
            if y0 == y1:
                continue
            cond = (v >= min(y0, y1)) & (v < max(y0, y1))
            xint = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
            inside ^= cond & (u < xint)
        return inside

    def line(self, pts: Sequence[tuple[float, float]], w: float) -> Mask:
        """A polyline of width w with round caps and joints."""
        out = np.zeros(self.u.shape, dtype=bool)
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            dx, dy = x1 - x0, y1 - y0
            L2 = dx * dx + dy * dy or 1e-12
            t = np.clip(((self.u - x0) * dx + (self.v - y0) * dy) / L2, 0.0, 1.0)
            d2 = (self.u - x0 - t * dx) ** 2 + (self.v - y0 - t * dy) ** 2
            out |= d2 <= (w / 2) ** 2
        return out

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> Mask:
        return (self.u >= x0) & (self.u <= x1) & (self.v >= y0) & (self.v <= y1)

    # -- painting ------------------------------------------------------------------------
    def sign(self, mask: Mask, colour: tuple[float, float, float]) -> None:
        """Paint part of the sign body (opaque)."""
        self.rgb[mask] = colour
        self.alpha[mask] = 1.0

    def paint(self, mask: Mask, colour: tuple[float, float, float]) -> None:
        """Paint a glyph, clipped to the sign body."""
        m = mask & (self.alpha > 0)
        self.rgb[m] = colour


# -- glyph helpers -------------------------------------------------------------------------
_SEGMENTS = {
    "0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd",
    "6": "afgedc", "7": "abc", "8": "abcdefg", "9": "abcdfg", "S": "afgcd", "O": "abcdef",
    "P": "abfge", "T": "a|",
}  # fmt: skip


def _text(cv: _Canvas, s: str, cx: float, cy: float, h: float, w: float, stroke: float) -> Mask:
    """Seven-segment text of height h, glyph width w, centred at (cx, cy)."""
    gap = w * 0.45
    total = len(s) * w + (len(s) - 1) * gap
    out = np.zeros(cv.u.shape, dtype=bool)
    for i, ch in enumerate(s):
        x0 = cx - total / 2 + i * (w + gap)
        x1, y0, y1, ym = x0 + w, cy - h / 2, cy + h / 2, cy
        seg = {
            "a": [(x0, y0), (x1, y0)],
            "b": [(x1, y0), (x1, ym)],
            "c": [(x1, ym), (x1, y1)],
            "d": [(x0, y1), (x1, y1)],
            "e": [(x0, ym), (x0, y1)],
            "f": [(x0, y0), (x0, ym)],
            "g": [(x0, ym), (x1, ym)],
            "|": [((x0 + x1) / 2, y0), ((x0 + x1) / 2, y1)],
        }
        for code in _SEGMENTS[ch]:
            out |= cv.line(seg[code], stroke)
    return out


def _car(cv: _Canvas, cx: float, cy: float, s: float) -> Mask:
    body = cv.rect(cx - 0.5 * s, cy - 0.05 * s, cx + 0.5 * s, cy + 0.3 * s)
    cabin = cv.rect(cx - 0.3 * s, cy - 0.3 * s, cx + 0.3 * s, cy)
    wheels = cv.disk(0.12 * s, cx - 0.3 * s, cy + 0.32 * s) | cv.disk(
        0.12 * s, cx + 0.3 * s, cy + 0.32 * s
    )
    return body | cabin | wheels


def _truck(cv: _Canvas, cx: float, cy: float, s: float) -> Mask:
    box = cv.rect(cx - 0.55 * s, cy - 0.35 * s, cx + 0.2 * s, cy + 0.3 * s)
    cab = cv.rect(cx + 0.25 * s, cy - 0.1 * s, cx + 0.55 * s, cy + 0.3 * s)
    wheels = cv.disk(0.11 * s, cx - 0.35 * s, cy + 0.33 * s) | cv.disk(
        0.11 * s, cx + 0.35 * s, cy + 0.33 * s
    )
    return box | cab | wheels


def _arrow(cv: _Canvas, pts: Sequence[tuple[float, float]], w: float, head: float) -> Mask:
    """A polyline shaft ending in a triangular head pointing along its last segment."""
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    d = np.array([x1 - x0, y1 - y0])
    d /= np.linalg.norm(d)
    n = np.array([-d[1], d[0]])
    base = np.array([x1, y1]) - d * head * 0.2
    tip = base + d * head
    left, right = base + n * head * 0.75, base - n * head * 0.75
    shaft = cv.line([*pts[:-1], tuple(base)], w)
    return shaft | cv.polygon([tuple(tip), tuple(left), tuple(right)])


def _quarter(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 12):
    a = np.radians(np.linspace(a0, a1, n))
    return [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in a]


def _person(cv: _Canvas, cx: float, cy: float, s: float, lean: float = 0.0) -> Mask:
    head = cv.disk(0.11 * s, cx + lean * s, cy - 0.45 * s)
    body = cv.line([(cx + lean * s, cy - 0.3 * s), (cx, cy + 0.1 * s)], 0.14 * s)
    legs = cv.line(
        [(cx - 0.18 * s, cy + 0.5 * s), (cx, cy + 0.1 * s), (cx + 0.2 * s, cy + 0.5 * s)], 0.1 * s
    )
    arms = cv.line(
        [(cx - 0.2 * s, cy - 0.05 * s), (cx + lean * s, cy - 0.22 * s), (cx + 0.22 * s, cy)],
        0.08 * s,
    )
    return head | body | legs | arms


# -- sign bodies ---------------------------------------------------------------------------
_TRI = [(0.0, -0.88), (0.95, 0.78), (-0.95, 0.78)]
_TRI_IN = [(0.0, -0.52), (0.64, 0.58), (-0.64, 0.58)]


def _warning(cv: _Canvas) -> None:
    cv.sign(cv.polygon(_TRI), RED)
    cv.sign(cv.polygon(_TRI_IN), WHITE)


def _prohibitory(cv: _Canvas, fill=WHITE) -> None:
    cv.sign(cv.disk(0.95), RED)
    cv.sign(cv.disk(0.72), fill)


def _mandatory(cv: _Canvas) -> None:
    cv.sign(cv.disk(0.95), WHITE)
    cv.sign(cv.disk(0.9), BLUE)


def _end_of(cv: _Canvas) -> Mask:
    cv.sign(cv.disk(0.95), BLACK)
    cv.sign(cv.disk(0.9), WHITE)
    k = cv.u + cv.v  # diagonal stripes from bottom-left to top-right
    return (np.abs(k) < 0.55) & (np.mod(k * 6.0, 1.0) < 0.45) & cv.disk(0.9)


def _draw(cv: _Canvas, c: int) -> None:
    speed = {0: "20", 1: "30", 2: "50", 3: "60", 4: "70", 5: "80", 7: "100", 8: "120"}
    if c in speed:
        _prohibitory(cv)
        s = speed[c]
        w = 0.25 if len(s) == 2 else 0.16
        cv.paint(_text(cv, s, 0.0, 0.0, 0.62, w, 0.1), BLACK)
    elif c == 6:
        cv.sign(cv.disk(0.95), GREY)
        cv.sign(cv.disk(0.88), WHITE)
        cv.paint(_text(cv, "80", 0.0, 0.0, 0.62, 0.26, 0.09), GREY)
        cv.paint(cv.line([(-0.6, 0.6), (0.6, -0.6)], 0.12), BLACK)
    elif c in (9, 10):
        _prohibitory(cv)
        if c == 9:
            cv.paint(_car(cv, -0.28, 0.02, 0.52), RED)
        else:
            cv.paint(_truck(cv, -0.26, 0.02, 0.55), RED)
        cv.paint(_car(cv, 0.3, 0.02, 0.52), BLACK)
    elif c == 11:
        _warning(cv)
        cv.paint(cv.line([(0.0, -0.2), (0.0, 0.5)], 0.13), BLACK)
        cv.paint(cv.line([(-0.28, 0.13), (0.28, 0.13)], 0.08), BLACK)
    elif c == 12:
        diamond = np.abs(cv.u) + np.abs(cv.v)
        cv.sign(diamond <= 0.95, WHITE)
        cv.sign(diamond <= 0.68, YELLOW)
    elif c == 13:
        cv.sign(cv.polygon([(-0.95, -0.7), (0.95, -0.7), (0.0, 0.92)]), RED)
        cv.sign(cv.polygon([(-0.6, -0.48), (0.6, -0.48), (0.0, 0.56)]), WHITE)
    elif c == 14:
        oct_pts = [
            (0.95 * np.cos(np.radians(22.5 + 45 * k)), 0.95 * np.sin(np.radians(22.5 + 45 * k)))
            for k in range(8)
        ]
        cv.sign(cv.polygon(oct_pts), WHITE)
        cv.sign(cv.polygon([(0.88 * x / 0.95, 0.88 * y / 0.95) for x, y in oct_pts]), RED)
        cv.paint(_text(cv, "STOP", 0.0, 0.0, 0.34, 0.2, 0.07), WHITE)
    elif c == 15:
        _prohibitory(cv)
    elif c == 16:
        _prohibitory(cv)
        cv.paint(_truck(cv, 0.0, 0.02, 0.8), BLACK)
    elif c == 17:
        cv.sign(cv.disk(0.95), RED)
        cv.paint(cv.rect(-0.6, -0.14, 0.6, 0.14), WHITE)
    elif c == 18:
        _warning(cv)
        cv.paint(cv.line([(0.0, -0.2), (0.0, 0.24)], 0.12), BLACK)
        cv.paint(cv.disk(0.07, 0.0, 0.42), BLACK)
    elif c == 19:  # curve to the left; 20 is its exact mirror (see templates())
        _warning(cv)
        pts = [(0.14, 0.5), (0.14, 0.22), *_quarter(-0.16, 0.22, 0.3, 0, -70, 8)[1:]]
        pts.append((-0.22, -0.12))
        cv.paint(_arrow(cv, pts, 0.1, 0.24), BLACK)
    elif c == 21:
        _warning(cv)
        pts = [
            (-0.1, 0.5),
            *_quarter(0.1, 0.25, 0.2, 180, 270, 6),
            *_quarter(0.1, -0.15, 0.2, 90, 0, 6),
        ]
        cv.paint(cv.line(pts, 0.1), BLACK)
    elif c == 22:
        _warning(cv)
        cv.paint(cv.line([(-0.45, 0.42), (0.45, 0.42)], 0.08), BLACK)
        cv.paint(
            cv.arc(0.17, 0.1, 180, 360, -0.2, 0.4) | cv.arc(0.17, 0.1, 180, 360, 0.2, 0.4), BLACK
        )
    elif c == 23:
        _warning(cv)
        cv.paint(_car(cv, 0.0, -0.02, 0.45), BLACK)
        s1 = [(-0.35 + 0.7 * t, 0.38 + 0.06 * np.sin(t * 12)) for t in np.linspace(0, 1, 12)]
        cv.paint(cv.line(s1, 0.06), BLACK)
    elif c == 24:  # narrows on the right: the right edge bends in
        _warning(cv)
        cv.paint(cv.line([(-0.18, 0.52), (-0.18, -0.12)], 0.09), BLACK)
        cv.paint(cv.line([(0.28, 0.52), (0.28, 0.22), (0.08, 0.02), (0.08, -0.12)], 0.09), BLACK)
    elif c == 25:
        _warning(cv)
        cv.paint(_person(cv, -0.05, 0.15, 0.6, lean=0.15), BLACK)
        cv.paint(cv.line([(0.12, 0.1), (0.35, 0.48)], 0.06), BLACK)
        cv.paint(cv.rect(-0.4, 0.38, -0.15, 0.5), BLACK)
    elif c == 26:
        _warning(cv)
        cv.paint(cv.rect(-0.15, -0.18, 0.15, 0.52), BLACK)
        cv.paint(cv.disk(0.09, 0.0, -0.06), RED)
        cv.paint(cv.disk(0.09, 0.0, 0.16), ORANGE)
        cv.paint(cv.disk(0.09, 0.0, 0.38), GREEN)
    elif c == 27:
        _warning(cv)
        cv.paint(_person(cv, 0.0, 0.15, 0.62), BLACK)
    elif c == 28:
        _warning(cv)
        cv.paint(_person(cv, -0.16, 0.15, 0.55) | _person(cv, 0.2, 0.22, 0.4), BLACK)
    elif c == 29:
        _warning(cv)
        wheels = cv.ring(0.14, 0.06, -0.24, 0.36) | cv.ring(0.14, 0.06, 0.24, 0.36)
        frame = cv.line(
            [(-0.24, 0.36), (-0.02, 0.12), (0.24, 0.36), (0.08, 0.36), (-0.02, 0.12)], 0.06
        )
        cv.paint(wheels | frame | cv.disk(0.07, 0.02, -0.05), BLACK)
    elif c == 30:
        _warning(cv)
        m = np.zeros(cv.u.shape, dtype=bool)
        for a in (90, 30, 150):
            dx, dy = 0.3 * np.cos(np.radians(a)), 0.3 * np.sin(np.radians(a))
            m |= cv.line([(-dx, 0.18 - dy), (dx, 0.18 + dy)], 0.07)
        cv.paint(m, BLACK)
    elif c == 31:
        _warning(cv)
        body = cv.polygon([(-0.38, 0.46), (-0.28, 0.08), (0.1, 0.02), (0.25, -0.22), (0.36, -0.12),
                           (0.26, 0.12), (0.2, 0.46), (0.1, 0.46), (0.05, 0.2), (-0.2, 0.22),
                           (-0.26, 0.46)])  # fmt: skip
        cv.paint(body, BLACK)
    elif c == 32:
        cv.paint(_end_of(cv), GREY)
    elif c == 33:  # turn right ahead; 34 is its exact mirror
        _mandatory(cv)
        pts = [
            (-0.18, 0.55),
            (-0.18, 0.05),
            *_quarter(0.07, 0.05, 0.25, 180, 270, 8)[1:],
            (0.55, -0.2),
        ]
        cv.paint(_arrow(cv, pts, 0.16, 0.36), WHITE)
    elif c == 35:
        _mandatory(cv)
        cv.paint(_arrow(cv, [(0.0, 0.6), (0.0, -0.6)], 0.18, 0.42), WHITE)
    elif c == 36:  # straight or right; 37 is its exact mirror
        _mandatory(cv)
        cv.paint(_arrow(cv, [(-0.1, 0.62), (-0.1, -0.62)], 0.15, 0.36), WHITE)
        pts = [(-0.1, 0.3), *_quarter(0.1, 0.1, 0.2, 180, 270, 6)[1:], (0.6, -0.1)]
        cv.paint(_arrow(cv, pts, 0.15, 0.34), WHITE)
    elif c == 38:  # keep right; 39 is its exact mirror
        _mandatory(cv)
        cv.paint(_arrow(cv, [(-0.4, -0.4), (0.48, 0.48)], 0.18, 0.42), WHITE)
    elif c == 40:
        _mandatory(cv)
        m = np.zeros(cv.u.shape, dtype=bool)
        for k in range(3):
            a0 = 120 * k
            pts = _quarter(0.0, 0.0, 0.45, a0 + 10, a0 + 85, 8)
            m |= _arrow(cv, pts, 0.13, 0.3)
        cv.paint(m, WHITE)
    elif c in (41, 42):
        stripes = _end_of(cv)
        veh = _car(cv, -0.28, 0.02, 0.5) if c == 41 else _truck(cv, -0.26, 0.02, 0.52)
        cv.paint(veh | _car(cv, 0.3, 0.02, 0.5), GREY)
        cv.paint(stripes & ~veh, GREY)
    else:  # pragma: no cover - every class is listed above or derived by mirroring
        raise ValueError(f"no drawing for class {c}")


_MIRRORED = {b: a for a, b in MIRROR_PAIRS}


def template_size(image_size: int) -> int:
    """Resolution of the clean templates used for images of side ``image_size``."""
    return int(min(256, max(64, 2 * image_size)))


@lru_cache(maxsize=4)
def templates(size: int = 64) -> np.ndarray:
    """Clean RGBA templates of all 43 classes, shape (43, size, size, 4), float32 in [0, 1].

    The second class of each mirror pair is the exact horizontal flip of the first.
    """
    ss = max(2, 512 // size)
    out = np.zeros((NUM_CLASSES, size, size, 4), dtype=np.float32)
    for c in range(NUM_CLASSES):
        if c in _MIRRORED:
            continue
        cv = _Canvas(size * ss)
        _draw(cv, c)
        rgba = np.concatenate([cv.rgb * cv.alpha[..., None], cv.alpha[..., None]], axis=-1)
        rgba = rgba.reshape(size, ss, size, ss, 4).mean(axis=(1, 3))
        # un-premultiply so that bilinear sampling of colour + alpha composites cleanly
        a = rgba[..., 3:4]
        rgba[..., :3] = np.where(a > 0, rgba[..., :3] / np.maximum(a, 1e-6), 0.0)
        out[c] = rgba
    for b, a in _MIRRORED.items():
        out[b] = out[a][:, ::-1]
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Variation:
    """Ranges of the per-image randomness (the defaults make learning non-trivial)."""

    scale: tuple[float, float] = (0.6, 0.92)  # sign radius / half the image side
    rotation_deg: float = 8.0
    aspect: tuple[float, float] = (0.9, 1.1)
    brightness: tuple[float, float] = (0.5, 1.15)
    colour_cast: float = 0.12
    clutter_max: int = 3
    blur_max: float = 0.8  # weight of a 3x3 box blur mixed in (applied up to twice)
    noise_max: float = 0.04


def render(
    labels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    variation: Variation | None = None,
    chunk: int = 512,
    supersample: int = 1,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image per label: uint8 (n, size, size, 3) and each sign's box (n, 4) x1,y1,x2,y2."""
    var = variation or Variation()
    labels = np.asarray(labels, dtype=np.int64)
    tpl = templates(template_size(size))
    T = tpl.shape[1]
    flat = tpl.reshape(NUM_CLASSES * T * T, 4)
    n = len(labels)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    rois = np.empty((n, 4), dtype=np.int64)
    S2 = size * supersample
    grid = ((np.arange(S2, dtype=np.float32) + 0.5) / S2) * 2 - 1
    # linear interpolation matrix from a 4x4 grid of colours to S2 x S2 pixels
    ctrl = np.linspace(-1, 1, 4, dtype=np.float32)
    interp = np.clip(1 - np.abs(grid[:, None] - ctrl[None, :]) / (ctrl[1] - ctrl[0]), 0, 1)
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        m = len(lab)
        s = rng.uniform(*var.scale, m).astype(np.float32)
        th = np.radians(rng.uniform(-var.rotation_deg, var.rotation_deg, m)).astype(np.float32)
        asp = rng.uniform(*var.aspect, m).astype(np.float32)
        tx = (rng.uniform(-1, 1, m) * (1 - s) * 0.9).astype(np.float32)
        ty = (rng.uniform(-1, 1, m) * (1 - s) * 0.9).astype(np.float32)
        # inverse affine: image coords p -> template coords q = R(-th) (p - t) / (s * aspect)
        px = grid[None, None, :] - tx[:, None, None]
        py = grid[None, :, None] - ty[:, None, None]
        c, sn = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
        qx = (c * px + sn * py) / (s * asp)[:, None, None]
        qy = (-sn * px + c * py) / (s / asp)[:, None, None]
        fx = np.clip((qx + 1) * (T / 2) - 0.5, 0, T - 1.001)
        fy = np.clip((qy + 1) * (T / 2) - 0.5, 0, T - 1.001)
        x0, y0 = fx.astype(np.int64), fy.astype(np.int64)
        wx, wy = (fx - x0)[..., None], (fy - y0)[..., None]
        base = lab[:, None, None] * (T * T) + y0 * T + x0
        sign = (
            flat[base] * (1 - wx) * (1 - wy)
            + flat[base + 1] * wx * (1 - wy)
            + flat[base + T] * (1 - wx) * wy
            + flat[base + T + 1] * wx * wy
        )
        alpha = sign[..., 3:4]
        light = rng.uniform(*var.brightness, (m, 1, 1, 1)) * (
            1 + rng.uniform(-var.colour_cast, var.colour_cast, (m, 1, 1, 3))
        )
        rgb = sign[..., :3] * light.astype(np.float32)
        # background: smooth colour field plus clutter rectangles
        cols = rng.uniform(0, 1, (m, 4, 4, 3)).astype(np.float32) ** 1.3
        bg = np.einsum("yi,nijc,xj->nyxc", interp, cols, interp, optimize=True)
        bg *= rng.uniform(0.4, 1.1, (m, 1, 1, 1)).astype(np.float32)
        nrect = rng.integers(0, var.clutter_max + 1, m)
        for i in np.nonzero(nrect)[0]:
            for _ in range(nrect[i]):
                w, h = rng.integers(S2 // 12 + 1, S2 // 4 + 2, 2)
                x, y = rng.integers(0, S2 - w), rng.integers(0, S2 - h)
                bg[i, y : y + h, x : x + w] = rng.uniform(0, 1, 3)
        img = alpha * rgb + (1 - alpha) * bg
        # blur: mix in a 3x3 box blur (once or twice) by a random weight
        for _ in range(2):
            wb = rng.uniform(0, var.blur_max, (m, 1, 1, 1)).astype(np.float32)
            pad = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
            box = sum(pad[:, dy : dy + S2, dx : dx + S2] for dy in range(3) for dx in range(3)) / 9
            img = (1 - wb) * img + wb * box
        if supersample > 1:
            img = img.reshape(m, size, supersample, size, supersample, 3).mean(axis=(2, 4))
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        img += noise * rng.uniform(0, var.noise_max, (m, 1, 1, 1)).astype(np.float32)
        images[start : start + m] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        half = size / 2
        r = s * half * np.maximum(asp, 1 / asp) * 0.97
        cx, cy = (tx + 1) * half, (ty + 1) * half
        box4 = np.stack([cx - r, cy - r, cx + r, cy + r], axis=1)
        rois[start : start + m] = np.clip(np.round(box4), 0, size - 1).astype(np.int64)
        if progress is not None:
            progress(m)
    return images, rois
