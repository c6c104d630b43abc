"""Classical least-squares fit of a Dysonian line (pure NumPy/SciPy, no torch).

Model (``B`` in gauss, ``t`` the field scaled to [-1, 1] over the measured sweep)::

    y(B) = amplitude * dysonian(B, B0, dB, p, geometry) / ptp(p)
           +  offset  +  slope * t  +  curvature * t**2

``dysonian`` is :func:`dysonian_pl.lineshapes.dysonian` (the one line-shape
function of the project) and ``ptp(p)`` the peak-to-peak of that line for a
whole line (its two extrema, found once per call), so ``amplitude`` is the
line's peak-to-peak in data units (positive for a correctly phased line; a
phase-flipped line gets a negative amplitude). The baseline is quadratic in
``t``: offset (at the sweep centre), slope and curvature are in data units (the
change over half the sweep). The simulated training spectra carry such a
curvature (+-0.01 of the line's peak-to-peak by default); with a straight
baseline only, it alone moved 4 % of held-out set-4 fits past |dp| > 0.05 even
from a start at the truth.

Given (B0, dB, p) the model is linear in (amplitude, offset, slope, curvature),
so the fit is by *variable projection*: :func:`scipy.optimize.least_squares`
(``trf``, ``x_scale="jac"``) moves only the three nonlinear parameters inside
their bounds and every residual evaluation solves the 4-column linear problem
exactly. The minimiser is the same as that of the joint 7-parameter fit; the
reported standard errors come from the Jacobian of the full 7-parameter model at
the solution, ``cov = inv(J^T J) * sum(r^2) / (n - 7)`` (NaN where ``J^T J`` is
singular).

Default bounds (``default_bounds``):

* ``B0`` in [Bmin, Bmax] of the sweep;
* ``dB`` in [0.5 * median field step, Bmax - Bmin]: a line narrower than half a
  sampling step is not resolved, one wider than the sweep is a baseline;
* ``p`` in [1e-3, 20]. Beyond p ~ 2.6 (plate) / 4.6 (sphere) p is not
  identifiable from the shape alone (physics.md), so a fit there may wander.

A parameter that ends within ``1e-6 * max(|bound|, upper - lower)`` of one of its
bounds is listed in ``FitResult.at_bound`` and the fit counts as unsuccessful, with
one exception: ``p`` at a lower bound <= 1e-3 is the physical limit p -> 0 of a
symmetric (Lorentzian-derivative) line, e.g. a thin sample or a non-conducting
standard, and is a valid answer when the fit describes the data (R^2 >= 0.99; its
standard error is then large, because the shape depends on p only at order p^2);
it is still listed in ``at_bound``. Wrong minima from a poor start also tend to
end at p -> 0, but with R^2 well below 0.99 (measured: < 0.93 on set-4, against
> 0.999 for correct fits and 0.9987 for the strong-pitch standard).

Start points: ``"data"`` reads the start from the spectrum's extrema (see
:func:`data_start`), ``"naive"`` takes the window centre, a tenth of the window
as width and p = 1 (often lands in a wrong minimum), a dict or ``(B0, dB, p)``
tuple is an explicit start (e.g. a CNN prediction: the hybrid method).

Command line: ``python -m dysonian_pl lsq FILES... [--geometry plate|sphere]
[--start data|naive] [--out results.csv] [--json results.json]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from .lineshapes import GEOMETRIES, dysonian

__all__ = [
    "FitResult",
    "NONLINEAR",
    "PARAM_NAMES",
    "data_start",
    "default_bounds",
    "fit_spectrum",
    "line_extrema",
    "main",
]

NONLINEAR: tuple[str, str, str] = ("B0", "dB", "p")
LINEAR: tuple[str, str, str, str] = ("amplitude", "offset", "slope", "curvature")
PARAM_NAMES: tuple[str, ...] = NONLINEAR + LINEAR

#: p bounds of the default fit (dimensionless).
P_BOUNDS: tuple[float, float] = (1e-3, 20.0)
#: p range over which the lobe-amplitude ratio is inverted for the data start: up to
#: the minimum of A/D, beyond which the shape does not determine p (physics.md).
_P_START_RANGE = {"plate": (0.05, 2.6), "sphere": (0.05, 4.6)}
#: relative distance to a bound that counts as "pinned at the bound".
BOUND_RTOL = 1e-6
MIN_POINTS = 16
#: p at its lower limit counts as a valid p -> 0 reading only with at least this R^2.
P_ZERO_MIN_R2 = 0.99


@dataclass
class FitResult:
    """One least-squares fit. ``params`` and ``stderr`` hold B0, dB, p, amplitude,
    offset, slope, curvature (field quantities in G, the linear ones in data units:
    the baseline is offset + slope * t + curvature * t**2, t in [-1, 1] over the sweep)."""

    params: dict[str, float]
    stderr: dict[str, float]
    success: bool  # optimiser converged and no parameter pinned at a bound
    nfev: int
    cost: float  # 0.5 * sum(residual^2), data units
    seconds: float
    start: dict[str, float]
    start_mode: str  # "data", "naive" or "explicit"
    at_bound: tuple[str, ...] = ()
    r2: float = math.nan  # 1 - SS_res / SS_tot (about the data mean)
    optimizer_success: bool = True
    message: str = ""
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["at_bound"] = list(self.at_bound)
        d["bounds"] = {k: list(v) for k, v in self.bounds.items()}
        return d


# --------------------------------------------------------------------------- #
# line-shape helpers (all through lineshapes.dysonian)
# --------------------------------------------------------------------------- #
_U_GRID = np.linspace(-4.0, 4.0, 4001)  # field offset in units of dB; extrema lie in |u| < 2


def _refine(u: np.ndarray, f: np.ndarray, i: int) -> tuple[float, float]:
    """Vertex of the parabola through f[i-1], f[i], f[i+1] (position, value)."""
    if i == 0 or i == len(f) - 1:
        return float(u[i]), float(f[i])
    a, b, c = f[i - 1], f[i], f[i + 1]
    den = a - 2.0 * b + c
    if den == 0:
        return float(u[i]), float(b)
    d = 0.5 * (a - c) / den
    h = u[1] - u[0]
    return float(u[i] + d * h), float(b - 0.25 * (a - c) * d)


@lru_cache(maxsize=4096)
def line_extrema(p: float, geometry: str = "plate") -> tuple[float, float, float, float]:
    """``(u_max, u_min, f_max, f_min)`` of ``dysonian(B, 0, 1, p)``: positions of the
    maximum and minimum of a whole line in units of dB from B0, and their values."""
    f = dysonian(_U_GRID, 0.0, 1.0, p, geometry)
    u_max, f_max = _refine(_U_GRID, f, int(np.argmax(f)))
    u_min, f_min = _refine(_U_GRID, f, int(np.argmin(f)))
    return u_max, u_min, f_max, f_min


def _ptp(p: float, geometry: str) -> float:
    _, _, f_max, f_min = line_extrema(float(p), geometry)
    return f_max - f_min


@lru_cache(maxsize=4)
def _lobe_table(geometry: str) -> tuple[np.ndarray, np.ndarray]:
    """Lobe-amplitude ratio f_max / -f_min (increasing in p) on the start range."""
    lo, hi = _P_START_RANGE[geometry]
    ps = np.geomspace(lo, hi, 160)
    ratio = np.array([(lambda e: e[2] / -e[3])(line_extrema(float(q), geometry)) for q in ps])
    keep = np.concatenate([[True], np.diff(ratio) > 0])  # guard: strictly increasing for interp
    return ratio[keep], ps[keep]


# --------------------------------------------------------------------------- #
# input checks, bounds, start points
# --------------------------------------------------------------------------- #
def _prepare(field_g, intensity) -> tuple[np.ndarray, np.ndarray]:
    B = np.asarray(field_g, dtype=np.float64).ravel()
    y = np.asarray(intensity, dtype=np.float64).ravel()
    if B.shape != y.shape:
        raise ValueError(f"field and intensity differ in length ({B.size} vs {y.size})")
    ok = np.isfinite(B) & np.isfinite(y)
    B, y = B[ok], y[ok]
    if B.size < MIN_POINTS:
        raise ValueError(f"only {B.size} finite points; need at least {MIN_POINTS}")
    order = np.argsort(B, kind="stable")
    B, y = B[order], y[order]
    if not B[-1] > B[0]:
        raise ValueError("the field axis is constant; need a field sweep")
    if not np.ptp(y) > 0:
        raise ValueError("the spectrum is constant; there is no line to fit")
    return B, y


def _check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        allowed = ", ".join(repr(g) for g in GEOMETRIES)
        raise ValueError(f"geometry must be one of {allowed} (got {geometry!r})")


def default_bounds(field_g: np.ndarray) -> dict[str, tuple[float, float]]:
    """Bounds of B0, dB, p for a sorted field axis (see the module docstring)."""
    B = np.asarray(field_g, dtype=np.float64)
    span = float(B[-1] - B[0])
    step = float(np.median(np.diff(B))) if B.size > 1 else span
    if not step > 0:
        step = span / max(B.size - 1, 1)
    return {"B0": (float(B[0]), float(B[-1])), "dB": (0.5 * step, span), "p": P_BOUNDS}


def data_start(
    field_g: np.ndarray, intensity: np.ndarray, geometry: str = "plate"
) -> dict[str, float]:
    """Start point from the data's extrema (sorted field, finite data).

    The larger-field-order rule sets the polarity (a correctly phased line has its
    maximum first); the lobe-amplitude ratio max / -min gives p by inverting the
    ratio of the model line (tabulated from ``dysonian`` on p in 0.05-2.6 plate,
    0.05-4.6 sphere); with that p the model's extremum positions ``u_max, u_min``
    (in units of dB) turn the measured extremum fields into dB and B0. That p and
    16 more on a geometric grid over the same range are each scored by the
    variable-projection residual (one batched ``dysonian`` call) and the best is
    returned: the lobe ratio alone is biased when the line fills the sweep and the
    baseline cannot be read beside it.
    """
    B = np.asarray(field_g, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    w = max(1, B.size // 1024) * 2 + 1  # light boxcar against noise on the extrema
    ys = np.convolve(y, np.ones(w) / w, mode="same") if B.size > 4 * w else y.copy()
    ys[: w // 2] = ys[w // 2]  # edges of the boxcar see zero padding
    ys[len(ys) - w // 2 :] = ys[len(ys) - w // 2 - 1]
    i_max, i_min = int(np.argmax(ys)), int(np.argmin(ys))
    if i_min < i_max:  # phase-flipped (or a reversed) line: look at -y
        ys = -ys
        i_max, i_min = i_min, i_max
    # baseline: median of the points beyond 3 lobe separations from the line (the
    # dispersion wings make the median of the whole sweep biased), else of all points
    sep = B[i_min] - B[i_max]
    far = (B < B[i_max] - 3.0 * sep) | (B > B[i_min] + 3.0 * sep)
    ys = ys - np.median(ys[far] if far.sum() >= max(8, B.size // 20) else ys)
    hi, lo = ys[i_max], -ys[i_min]
    ratio_tab, p_tab = _lobe_table(geometry)
    ratio = hi / lo if lo > 0 else ratio_tab[-1]
    if not sep > 0:
        sep = 10.0 * float(np.median(np.diff(B)))
    # candidates: p from the lobe ratio, and a coarse p grid (the ratio is biased when
    # the baseline cannot be read beside the line); each p with the extremum positions
    # fixes B0 and dB; keep the candidate whose projected residual is smallest
    p_cands = np.concatenate([[float(np.interp(ratio, ratio_tab, p_tab))], _start_grid(geometry)])
    rows = np.empty((len(p_cands), 3))
    for k, p in enumerate(p_cands):
        u_max, u_min, _, _ = line_extrema(float(p), geometry)
        dB = sep / (u_min - u_max)
        rows[k] = (B[i_max] - u_max * dB, dB, p)
    if B.size < MIN_POINTS:
        best = 0
    else:
        proj = _Projection(B, (y - np.median(y)) / np.ptp(y), geometry)
        best = int(np.argmin(np.einsum("ij,ij->i", *(2 * (proj.residuals(rows),)))))
    B0, dB, p = rows[best]
    return {"B0": float(B0), "dB": float(dB), "p": float(p)}


@lru_cache(maxsize=4)
def _start_grid(geometry: str) -> np.ndarray:
    lo, hi = _P_START_RANGE[geometry]
    return np.geomspace(lo, hi, 16)


def naive_start(field_g: np.ndarray) -> dict[str, float]:
    lo, hi = float(field_g[0]), float(field_g[-1])
    return {"B0": 0.5 * (lo + hi), "dB": (hi - lo) / 10.0, "p": 1.0}


def _explicit_start(start) -> dict[str, float]:
    if isinstance(start, Mapping):
        missing = [k for k in NONLINEAR if k not in start]
        if missing:
            raise ValueError(f"start dict lacks {', '.join(missing)} (needs B0, dB, p)")
        vals = [start[k] for k in NONLINEAR]
    else:
        vals = list(np.asarray(start, dtype=np.float64).ravel())
        if len(vals) != 3:
            raise ValueError(
                f"start must be 'data', 'naive', a dict or (B0, dB, p) (got {start!r})"
            )
    out = {k: float(v) for k, v in zip(NONLINEAR, vals, strict=True)}
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError(f"start values must be finite (got {out})")
    return out


def _clip_inside(x: float, lo: float, hi: float) -> float:
    """Clip into [lo, hi], a little inside so that trf starts strictly feasible."""
    margin = 1e-3 * (hi - lo) if math.isfinite(hi - lo) else 0.0
    if not math.isfinite(x):
        x = 0.5 * (lo + hi) if math.isfinite(hi - lo) else 0.0
    return min(max(x, lo + margin), hi - margin)


# --------------------------------------------------------------------------- #
# the fit
# --------------------------------------------------------------------------- #
class _Projection:
    """Variable-projection residuals for fixed (scaled) data.

    Every model evaluation goes through one batched ``dysonian`` call for all the
    parameter rows it needs (the forward-difference Jacobian costs one call, not
    three), and the linear parameters of each row (amplitude, offset, slope,
    curvature) come from 4x4 normal equations.
    """

    def __init__(self, B: np.ndarray, y: np.ndarray, geometry: str) -> None:
        self.B, self.y, self.geometry = B, y, geometry
        self.t = (B - 0.5 * (B[0] + B[-1])) / (0.5 * (B[-1] - B[0]))
        self.t2 = self.t * self.t
        # baseline columns 1, t, t^2: their Gram block and their products with y
        base = np.stack([np.ones_like(self.t), self.t, self.t2])
        self.base = base
        self.fixed = base @ base.T
        self.fixed_y = base @ y
        self.nfev = 0  # model evaluations (parameter rows), Jacobian columns included
        self._last: tuple[bytes, np.ndarray] | None = None

    def shapes(self, rows: np.ndarray) -> np.ndarray:
        """dysonian for each (B0, dB, p) row: (k, n)."""
        rows = np.atleast_2d(rows)
        return np.atleast_2d(dysonian(self.B, rows[:, 0], rows[:, 1], rows[:, 2], self.geometry))

    def linear(self, g: np.ndarray) -> np.ndarray:
        """(k, 4) coefficients (a, c, s, q) minimising |a g + c + s t + q t^2 - y|^2 per
        row of g."""
        g = np.atleast_2d(g)
        k = g.shape[0]
        M = np.empty((k, 4, 4))
        M[:, 0, 0] = np.einsum("ij,ij->i", g, g)
        M[:, 0, 1:] = g @ self.base.T
        M[:, 1:, 0] = M[:, 0, 1:]
        M[:, 1:, 1:] = self.fixed
        rhs = np.empty((k, 4))
        rhs[:, 0] = g @ self.y
        rhs[:, 1:] = self.fixed_y
        d = np.sqrt(np.einsum("kii->ki", M))
        d[~(d > 0)] = 1.0
        Ms = M / d[:, :, None] / d[:, None, :]
        try:
            coef = np.linalg.solve(Ms, (rhs / d)[..., None])[..., 0]
        except np.linalg.LinAlgError:
            coef = np.stack(
                [np.linalg.lstsq(m, r, rcond=None)[0] for m, r in zip(Ms, rhs / d, strict=True)]
            )
        return coef / d

    def residuals(self, rows: np.ndarray) -> np.ndarray:
        g = self.shapes(rows)
        self.nfev += g.shape[0]
        coef = self.linear(g)
        return coef[:, :1] * g + coef[:, 1:] @ self.base - self.y

    def residual(self, theta: np.ndarray) -> np.ndarray:
        r = self.residuals(theta[None])[0]
        self._last = (np.asarray(theta, dtype=np.float64).tobytes(), r)
        return r

    def jacobian(self, theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Forward differences of the projected residual, all three columns in one call."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        r0 = self._last[1] if self._last is not None and self._last[0] == key else None
        if r0 is None:
            r0 = self.residual(theta)
        h = _SQRT_EPS * np.maximum(np.abs(theta), np.array([1.0, 1e-3, 1e-3]))
        h = np.where(theta + h > hi, -h, h)  # stay feasible at an upper bound
        rows = theta[None, :] + np.diag(h)
        R = self.residuals(rows)
        return ((R - r0) / h[:, None]).T


_SQRT_EPS = float(np.sqrt(np.finfo(np.float64).eps))


def _ptp_batch(p: np.ndarray, geometry: str) -> np.ndarray:
    f = np.atleast_2d(dysonian(_U_GRID, np.zeros(len(p)), np.ones(len(p)), p, geometry))
    out = np.empty(len(p))
    for k in range(len(p)):
        out[k] = (
            _refine(_U_GRID, f[k], int(np.argmax(f[k])))[1]
            - _refine(_U_GRID, f[k], int(np.argmin(f[k])))[1]
        )
    return out


def _stderr(proj: _Projection, theta: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Standard errors of (B0, dB, p, amplitude, offset, slope, curvature) in the
    projection's scaled units, from the full 7-parameter Jacobian at the solution
    (central differences for B0, dB, p; the model is amplitude * g / ptp(p) + c + s t
    + q t^2)."""
    m = len(PARAM_NAMES)
    n = proj.B.size
    if n <= m:
        return np.full(m, np.nan)
    h = 1e-5 * np.array([theta[1], theta[1], max(theta[2], 1e-2)])
    h[2] = min(h[2], 0.5 * theta[2])
    rows = np.repeat(theta[None, :], 7, axis=0)
    rows[1:4] += np.diag(h)
    rows[4:7] -= np.diag(h)
    g = proj.shapes(rows)
    ptp = _ptp_batch(rows[:, 2], proj.geometry)
    f = g / ptp[:, None]
    amp = coef[0] * ptp[0]
    J = np.empty((n, m))
    J[:, :3] = (amp * (f[1:4] - f[4:7]) / (2.0 * h[:, None])).T
    J[:, 3] = f[0]
    J[:, 4:] = proj.base.T
    resid = coef[0] * g[0] + coef[1:] @ proj.base - proj.y
    s2 = float(resid @ resid) / (n - m)
    norms = np.linalg.norm(J, axis=0)
    if not np.all(np.isfinite(J)) or not np.all(norms > 0):
        return np.full(m, np.nan)
    Js = J / norms
    JtJ = Js.T @ Js
    if not np.linalg.cond(JtJ) < 1e14:
        return np.full(m, np.nan)
    try:
        cov = np.linalg.inv(JtJ) * s2
    except np.linalg.LinAlgError:
        return np.full(m, np.nan)
    var = np.diag(cov) / norms**2
    return np.where(var >= 0, np.sqrt(np.abs(var)), np.nan)


def _at_p_zero(p: float, p_bounds: tuple[float, float]) -> bool:
    lo, hi = p_bounds
    return lo <= P_BOUNDS[0] and abs(p - lo) <= BOUND_RTOL * max(abs(lo), hi - lo)


def fit_spectrum(
    field_g,
    intensity,
    *,
    geometry: str = "plate",
    start: str | Mapping[str, float] | Sequence[float] = "data",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    max_nfev: int = 200,
) -> FitResult:
    """Least-squares fit of one Dysonian line (see the module docstring).

    ``field_g`` (G) and ``intensity`` are 1-D and of equal length; non-finite
    points are dropped and the rest sorted by field. ``bounds`` overrides the
    default bounds of any of B0, dB, p. Raises ValueError for an unknown
    geometry or start mode, mismatched lengths, fewer than 16 finite points or a
    constant spectrum.
    """
    t0 = time.perf_counter()
    _check_geometry(geometry)
    B, y = _prepare(field_g, intensity)
    bnds = default_bounds(B)
    if bounds:
        unknown = set(bounds) - set(NONLINEAR)
        if unknown:
            raise ValueError(f"bounds: unknown parameter(s) {sorted(unknown)} (allowed B0, dB, p)")
        for k, v in bounds.items():
            lo, hi = (float(x) for x in v)
            if not lo < hi:
                raise ValueError(f"bounds[{k!r}]: need lower < upper (got {lo}, {hi})")
            bnds[k] = (lo, hi)
    if bnds["dB"][0] <= 0 or bnds["p"][0] <= 0:
        raise ValueError("bounds: dB and p must have lower bounds > 0")

    if isinstance(start, str):
        if start == "data":
            x0, mode = data_start(B, y, geometry), "data"
        elif start == "naive":
            x0, mode = naive_start(B), "naive"
        else:
            raise ValueError(
                f"start must be 'data', 'naive', a dict or (B0, dB, p) (got {start!r})"
            )
    else:
        x0, mode = _explicit_start(start), "explicit"
    x0 = {k: _clip_inside(x0[k], *bnds[k]) for k in NONLINEAR}

    # scale the data: median 0, peak-to-peak 1 (well-conditioned for any file units)
    y_mid = float(np.median(y))
    y_scale = float(np.ptp(y))
    ys = (y - y_mid) / y_scale
    proj = _Projection(B, ys, geometry)
    lo = np.array([bnds[k][0] for k in NONLINEAR])
    hi = np.array([bnds[k][1] for k in NONLINEAR])
    res = least_squares(
        proj.residual,
        np.array([x0[k] for k in NONLINEAR]),
        jac=lambda th: proj.jacobian(th, lo, hi),
        bounds=(lo, hi),
        method="trf",
        x_scale="jac",
        max_nfev=max_nfev,
    )
    theta = np.asarray(res.x, dtype=np.float64)
    g = proj.shapes(theta)[0]
    coef = proj.linear(g)[0]
    a, c, s, q = coef
    resid = a * g + coef[1:] @ proj.base - ys
    ptp = _ptp(theta[2], geometry)
    se = _stderr(proj, theta, coef)

    values = [
        theta[0], theta[1], theta[2],
        a * ptp * y_scale, c * y_scale + y_mid, s * y_scale, q * y_scale,
    ]  # fmt: skip
    params = {k: float(v) for k, v in zip(PARAM_NAMES, values, strict=True)}
    unit = np.array([1.0, 1.0, 1.0, y_scale, y_scale, y_scale, y_scale])
    stderr = {k: float(v) for k, v in zip(PARAM_NAMES, se * unit, strict=True)}

    pinned = []
    for k, v in zip(NONLINEAR, theta, strict=True):
        b_lo, b_hi = bnds[k]
        for b in (b_lo, b_hi):
            if abs(v - b) <= BOUND_RTOL * max(abs(b), b_hi - b_lo):
                pinned.append(k)
                break
    ok = bool(res.success) and res.status > 0
    sst = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0 else math.nan
    # p at a lower bound <= 1e-3 is the symmetric-line limit p -> 0 (D/A < 4e-7), a valid
    # reading rather than a box constraint biting, provided the line is described (R^2);
    # listed in at_bound either way.
    p_zero_ok = _at_p_zero(theta[2], bnds["p"]) and r2 >= P_ZERO_MIN_R2
    blocking = [k for k in pinned if not (k == "p" and p_zero_ok)]
    return FitResult(
        params=params,
        stderr=stderr,
        success=ok and not blocking,
        nfev=int(proj.nfev),
        cost=float(0.5 * (resid @ resid) * y_scale**2),
        seconds=time.perf_counter() - t0,
        start=x0,
        start_mode=mode,
        at_bound=tuple(pinned),
        r2=r2,
        optimizer_success=ok,
        message=str(res.message),
        bounds={k: tuple(v) for k, v in bnds.items()},
    )


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def fit_best_of(
    field_g,
    intensity,
    starts: Sequence[str | Mapping[str, float] | Sequence[float]],
    *,
    geometry: str = "plate",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    max_nfev: int = 200,
) -> FitResult:
    """`fit_spectrum` from each of `starts`; the successful fit of lowest cost (the
    lowest cost of all when none succeeded). ``seconds`` is the time of all fits.

    The hybrid of `compare` and `infer --polish`: the CNN's answer and the data's
    extrema as two starts, so a CNN start that falls into a wrong minimum never makes
    the result worse than the classical data start.
    """
    if not starts:
        raise ValueError("starts: need at least one start")
    fits = [
        fit_spectrum(
            field_g, intensity, geometry=geometry, start=st, bounds=bounds, max_nfev=max_nfev
        )
        for st in starts
    ]
    ok = [f for f in fits if f.success] or fits
    best = min(ok, key=lambda f: f.cost)
    return dataclasses.replace(best, seconds=sum(f.seconds for f in fits))


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (`dysonian_pl.atomic`)."""
    from .atomic import atomic_write_text

    atomic_write_text(path, text)


def _pm(value: float, se: float, digits: int) -> str:
    if not math.isfinite(se):
        return f"{value:.{digits}f} ± nan"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def markdown_table(rows: list[tuple[str, FitResult]]) -> str:
    lines = [
        "| file | B0 (G) | dB (G) | p | R² | success | nfev | ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows:
        P, S = r.params, r.stderr
        if r.success:
            flag = "yes (p -> 0)" if r.at_bound else "yes"
        else:
            flag = "no (at bound: " + ", ".join(r.at_bound) + ")" if r.at_bound else "no"
        lines.append(
            f"| {name} | {_pm(P['B0'], S['B0'], 3)} | {_pm(P['dB'], S['dB'], 3)} | "
            f"{_pm(P['p'], S['p'], 4)} | {r.r2:.4f} | {flag} | {r.nfev} | {1e3 * r.seconds:.1f} |"
        )
    return "\n".join(lines)


_CSV_FIELDS = (
    ["file"]
    + [c for k in PARAM_NAMES for c in (k, f"{k}_se")]
    + ["r2", "success", "at_bound", "nfev", "cost", "ms", "start_mode", "error"]
)


def _csv_text(rows: list[tuple[str, FitResult | None, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for name, r, err in rows:
        row = {k: "" for k in _CSV_FIELDS}
        row["file"], row["error"] = name, err
        if r is not None:
            for k in PARAM_NAMES:
                row[k] = repr(r.params[k])
                row[f"{k}_se"] = repr(r.stderr[k])
            row.update(
                r2=repr(r.r2),
                success=r.success,
                at_bound=";".join(r.at_bound),
                nfev=r.nfev,
                cost=repr(r.cost),
                ms=f"{1e3 * r.seconds:.3f}",
                start_mode=r.start_mode,
            )
        w.writerow(row)
    return buf.getvalue()


def json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    from .readers import (
        FIELD_UNITS,
        SUPPORTED,
        UNIT_ASSUMED,
        SpectrumFileError,
        read_all_slices,
        read_spectrum,
    )

    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl lsq",
        description="Classical least-squares fit (B0, dB, p) of Dysonian lines in spectrometer files.",
    )
    ap.add_argument("files", nargs="+", help=f"spectrum files: {SUPPORTED}")
    ap.add_argument("--geometry", choices=GEOMETRIES, default="plate")
    ap.add_argument("--start", choices=("data", "naive"), default="data")
    ap.add_argument(
        "--field-unit",
        choices=FIELD_UNITS,
        help="the field unit of files that name none (default: gauss, with a warning for a "
        "text export)",
    )
    ap.add_argument(
        "--slices",
        choices=("first", "all"),
        default="first",
        help="of a 2D file: fit the first slice (default) or every slice, one row each",
    )
    ap.add_argument("--out", help="write a CSV of the results here")
    ap.add_argument("--json", help="write a JSON of the results here")
    args = ap.parse_args(argv)

    rows: list[tuple[str, FitResult | None, str]] = []
    failed = 0

    def fail(name: str, path, exc: Exception) -> None:
        nonlocal failed
        msg = " ".join(str(exc).split())
        if not isinstance(exc, SpectrumFileError):
            msg = f"{Path(path).name}: {msg}"
        print(f"error: {msg}", file=sys.stderr)
        rows.append((name, None, msg))
        failed += 1

    for path in args.files:
        try:
            if args.slices == "all":
                specs = read_all_slices(path, field_unit=args.field_unit)
            else:
                specs = [read_spectrum(path, field_unit=args.field_unit)]
        except (SpectrumFileError, ValueError) as exc:
            fail(str(path), path, exc)
            continue
        for spec in specs:
            name = str(path)
            if len(specs) > 1:
                name += f" [slice {spec.metadata.get('slice_index')}]"
            if spec.field_unit_assumed:
                print(
                    f"warning: {Path(path).name}: {UNIT_ASSUMED.format(where='')}", file=sys.stderr
                )
            try:
                r = fit_spectrum(
                    spec.field, spec.intensity, geometry=args.geometry, start=args.start
                )
            except ValueError as exc:
                fail(name, path, exc)
                continue
            rows.append((name, r, ""))

    done = [(n, r) for n, r, _ in rows if r is not None]
    if done:
        print(markdown_table(done))
    if args.out:
        write_atomic(args.out, _csv_text(rows))
    if args.json:
        payload = {
            "geometry": args.geometry,
            "start": args.start,
            "results": [
                {"file": n, "error": e or None, **(r.to_dict() if r is not None else {})}
                for n, r, e in rows
            ],
        }
        write_atomic(args.json, json.dumps(json_safe(payload), indent=2) + "\n")
    if failed:
        return 2 if failed == len(rows) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
