"""The overlay plot of `infer` as SVG, written with numpy and the standard library.

matplotlib costs more to import (1.2-1.7 s on a small CPU) than reading one file and
predicting its line, so `infer` draws its default plot itself: the measured spectrum
(resampled onto the window the model read, normalised) with the reconstructed line
above, the residual below, field ticks and labels in gauss, a title with the file
name and the parameters, grey bands where the sweep does not reach. The layout is
that of the PNG (`infer._overlay_png`, ``--plot-format png``).
"""

from __future__ import annotations

import html
import math

import numpy as np

__all__ = ["nice_ticks", "overlay_svg"]

WIDTH, HEIGHT = 700, 500
#: plot area: left, right, top, bottom edges in pixels (as the PNG's subplots_adjust)
LEFT, RIGHT, TOP, BOTTOM = 84.0, 679.0, 35.0, 450.0
#: height ratio of the data and residual panels, and the gap between them (fraction of
#: the mean panel height)
RATIO, GAP = 3.0, 0.08
MEASURED, RECONSTRUCTED, RESIDUAL = "#333333", "#d62728", "#1f77b4"
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'


def nice_ticks(lo: float, hi: float, target: int = 6) -> tuple[list[float], int]:
    """Ticks at 1, 2, 2.5 or 5 x 10^k inside [lo, hi], and the decimals their labels need."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [], 0
    raw = (hi - lo) / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = m * mag
        if step >= raw * (1 - 1e-9):
            break
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + 1e-9 * step:
        ticks.append(k * step)
        k += 1
    decimals = max(0, -math.floor(math.log10(step) + 1e-12) + (1 if m == 2.5 else 0))
    return ticks, decimals


def _fmt(v: float, decimals: int) -> str:
    text = f"{v:.{decimals}f}"
    return "0" if float(text) == 0 else text.replace("-", "\u2212")


class _Panel:
    """A panel's pixel box and data limits; maps data to pixels."""

    def __init__(self, x0, x1, y0, y1, top, bottom):
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1  # data limits
        self.top, self.bottom = top, bottom  # pixels

    def px(self, x):
        return LEFT + (np.asarray(x, float) - self.x0) / (self.x1 - self.x0) * (RIGHT - LEFT)

    def py(self, y):
        h = self.bottom - self.top
        return self.bottom - (np.asarray(y, float) - self.y0) / (self.y1 - self.y0) * h


def _path(xs: np.ndarray, ys: np.ndarray) -> str:
    """SVG path data through the finite points; a non-finite point breaks the line."""
    ok = np.isfinite(xs) & np.isfinite(ys)
    parts: list[str] = []
    start = True
    for x, y, good in zip(xs.tolist(), ys.tolist(), ok.tolist(), strict=True):
        if not good:
            start = True
            continue
        parts.append(f"{'M' if start else ''}{x:.1f},{y:.1f}")
        start = False
    return " ".join(parts)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in `mask`."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _limits(values: np.ndarray, pad: float, include_zero: bool = False) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if include_zero:
        v = np.concatenate([v, [0.0]])
    if not v.size:
        return -1.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    d = pad * (hi - lo) if hi > lo else 1.0
    return lo - d, hi + d


def _legend_corner(panel: _Panel, xs: np.ndarray, ys: list[np.ndarray], w: float, h: float):
    """Pixel origin of a w x h legend box in the panel corner that hides the fewest points."""
    px = panel.px(xs)
    pys = [panel.py(y) for y in ys]
    best = None
    for cx, cy in (
        (RIGHT - w - 8, panel.top + 6),
        (LEFT + 8, panel.top + 6),
        (RIGHT - w - 8, panel.bottom - h - 6),
        (LEFT + 8, panel.bottom - h - 6),
    ):
        inside = sum(
            int(np.count_nonzero((px >= cx) & (px <= cx + w) & (py >= cy) & (py <= cy + h)))
            for py in pys
        )
        if best is None or inside < best[0]:
            best = (inside, cx, cy)
    return best[1], best[2]


def overlay_svg(
    axis: np.ndarray,
    measured: np.ndarray,
    recon: np.ndarray,
    covered: np.ndarray,
    title: str,
) -> bytes:
    """The overlay plot (UTF-8 SVG): measured and reconstructed line, residual below.

    `axis` (G), `measured`, `recon` (normalised units) and `covered` (points inside the
    measured sweep) have one length; only covered points of the measurement and the
    residual are drawn, and the y range is that of the covered data and reconstruction.
    """
    axis = np.asarray(axis, dtype=np.float64)
    covered = np.asarray(covered, dtype=bool)
    m = np.where(covered, np.asarray(measured, np.float64), np.nan)
    r = np.asarray(recon, dtype=np.float64)
    resid = m - r
    x0, x1 = float(axis[0]), float(axis[-1])
    if not x1 > x0:
        x0, x1 = x0 - 0.5, x0 + 0.5

    height = BOTTOM - TOP
    h_top = height / (1 + 1 / RATIO + GAP * (1 + 1 / RATIO) / 2)
    h_bottom = h_top / RATIO
    gap = height - h_top - h_bottom
    y_lo, y_hi = _limits(np.concatenate([m[covered], r[covered]]), 0.08)
    top = _Panel(x0, x1, y_lo, y_hi, TOP, TOP + h_top)
    r_lo, r_hi = _limits(resid, 0.05, include_zero=True)
    bottom = _Panel(x0, x1, r_lo, r_hi, TOP + h_top + gap, BOTTOM)

    out: list[str] = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" {FONT} font-size="11">',
        f"<title>{html.escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        "<defs>",
    ]
    for name, p in (("data", top), ("resid", bottom)):
        out.append(
            f'<clipPath id="clip-{name}"><rect x="{LEFT}" y="{p.top:.1f}" '
            f'width="{RIGHT - LEFT}" height="{p.bottom - p.top:.1f}"/></clipPath>'
        )
    out.append("</defs>")

    xticks, x_dec = nice_ticks(x0, x1)
    for name, p in (("data", top), ("resid", bottom)):
        # where the sweep does not reach
        for a, b in _runs(~covered):
            xa = float(p.px(axis[max(a - 1, 0)] if a else axis[0]))
            xb = float(p.px(axis[min(b + 1, len(axis) - 1)]))
            out.append(
                f'<rect x="{xa:.1f}" y="{p.top:.1f}" width="{max(xb - xa, 0.5):.1f}" '
                f'height="{p.bottom - p.top:.1f}" fill="#e6e6e6"/>'
            )
        g = f'<g clip-path="url(#clip-{name})" fill="none" stroke-linejoin="round">'
        out.append(g)
        if p is top:
            out.append(
                f'<path d="{_path(p.px(axis), p.py(m))}" stroke="{MEASURED}" stroke-width="1"/>'
            )
            out.append(
                f'<path d="{_path(p.px(axis), p.py(r))}" stroke="{RECONSTRUCTED}" '
                'stroke-width="1.2"/>'
            )
        else:
            zero = float(p.py(0.0))
            out.append(
                f'<line x1="{LEFT}" y1="{zero:.1f}" x2="{RIGHT}" y2="{zero:.1f}" '
                'stroke="#808080" stroke-width="0.6"/>'
            )
            out.append(
                f'<path d="{_path(p.px(axis), p.py(resid))}" stroke="{RESIDUAL}" '
                'stroke-width="0.8"/>'
            )
        out.append("</g>")
        # frame and ticks
        out.append(
            f'<rect x="{LEFT}" y="{p.top:.1f}" width="{RIGHT - LEFT}" '
            f'height="{p.bottom - p.top:.1f}" fill="none" stroke="black" stroke-width="0.8"/>'
        )
        for t in xticks:
            x = float(p.px(t))
            out.append(
                f'<line x1="{x:.1f}" y1="{p.bottom:.1f}" x2="{x:.1f}" y2="{p.bottom + 3.5:.1f}" '
                'stroke="black" stroke-width="0.8"/>'
            )
            if p is bottom:
                out.append(
                    f'<text x="{x:.1f}" y="{p.bottom + 15:.1f}" text-anchor="middle">'
                    f"{_fmt(t, x_dec)}</text>"
                )
        yticks, y_dec = nice_ticks(p.y0, p.y1, 6 if p is top else 4)
        if len(yticks) < 2:  # a narrow range between two nice steps: ask for finer ones
            yticks, y_dec = nice_ticks(p.y0, p.y1, 8)
        for t in yticks:
            y = float(p.py(t))
            out.append(
                f'<line x1="{LEFT - 3.5}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" '
                'stroke="black" stroke-width="0.8"/>'
            )
            out.append(
                f'<text x="{LEFT - 6}" y="{y + 3.8:.1f}" text-anchor="end">{_fmt(t, y_dec)}</text>'
            )
        label = "normalised signal" if p is top else "residual"
        yc = (p.top + p.bottom) / 2
        out.append(
            f'<text x="20" y="{yc:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 20 {yc:.1f})">{label}</text>'
        )

    # legend
    entries = [
        ("measured (resampled, normalised)", MEASURED, 1.0),
        ("reconstructed", RECONSTRUCTED, 1.2),
    ]
    w, h = 230.0, 36.0
    lx, ly = _legend_corner(top, axis, [m, r], w, h)
    for k, (text, colour, width) in enumerate(entries):
        y = ly + 11 + 15 * k
        out.append(
            f'<line x1="{lx:.1f}" y1="{y:.1f}" x2="{lx + 24:.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="{width}"/>'
        )
        out.append(f'<text x="{lx + 30:.1f}" y="{y + 3.8:.1f}" font-size="10">{text}</text>')

    out.append(
        f'<text x="{(LEFT + RIGHT) / 2:.1f}" y="{BOTTOM + 36:.1f}" text-anchor="middle">'
        "field (G)</text>"
    )
    # about 6.2 px per character at 11 px: a long title gets a smaller font, not clipped
    size = min(11.0, max(6.0, 11.0 * (WIDTH - 20) / max(6.2 * len(title), 1.0)))
    out.append(
        f'<text x="{WIDTH / 2:.1f}" y="{TOP - 12:.1f}" text-anchor="middle" '
        f'font-size="{size:.1f}">{html.escape(title)}</text>'
    )
    out.append("</svg>")
    return ("\n".join(out) + "\n").encode("utf-8")
