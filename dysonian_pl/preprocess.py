"""One preprocessing path from a raw spectrum to the network's input.

Training (simulated spectra), inference on real files and evaluation all end in
`normalise`: polarity rule, then division by peak-to-peak. Real spectra first go
through `prepare_real` (finite points, sorted field, baseline, resampling onto the
model's axis). The network builds its own input channels from the normalised
spectrum (`model.input_channels`), so nothing here can disagree with training.

The functions take numpy arrays (prediction on files: no torch import) or torch
tensors (training); both kinds go through the same arithmetic in the same dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

#: A batch of spectra: a numpy array (prediction from files) or a torch tensor (training).
Spectra = TypeVar("Spectra", np.ndarray, "torch.Tensor")


def polarity_sign(s: Spectra) -> Spectra:
    """+1 or -1 per row: -1 where the first extremum is a minimum (physics.md polarity rule).

    For every p > 0 a whole Dysonian line has its low-field lobe positive, so a
    correctly phased line with increasing field has its maximum first. `s` is a numpy
    array or a torch tensor (..., L); the result is of the same kind, shape (..., 1).
    """
    return _extrema(s)[0]


def _extrema(s: Spectra) -> tuple[Spectra, Spectra]:
    if isinstance(s, np.ndarray):
        imax = np.argmax(s, axis=-1)[..., None]
        imin = np.argmin(s, axis=-1)[..., None]
        hi = np.take_along_axis(s, imax, axis=-1)
        lo = np.take_along_axis(s, imin, axis=-1)
        sign = np.where(imin < imax, -1.0, 1.0).astype(s.dtype)
        return sign, np.maximum(hi - lo, np.finfo(s.dtype).tiny)
    import torch  # a tensor: torch is loaded already

    if s.device.type == "cpu" and s.dtype in (torch.float32, torch.float64) and s.ndim:
        # numpy's argmax/argmin (first occurrence, as torch's) are about three times
        # faster than torch's max/min with indices on a CPU: the simulator's hot path
        a = s.detach().numpy()
        imax = torch.from_numpy(np.argmax(a, axis=-1)[..., None])
        imin = torch.from_numpy(np.argmin(a, axis=-1)[..., None])
        hi, lo = s.amax(dim=-1, keepdim=True), s.amin(dim=-1, keepdim=True)
    else:
        hi, imax = s.max(dim=-1, keepdim=True)
        lo, imin = s.min(dim=-1, keepdim=True)
    sign = torch.where(imin < imax, -1.0, 1.0).to(s.dtype)
    return sign, (hi - lo).clamp_min(torch.finfo(s.dtype).tiny)


def _span(s: Spectra) -> Spectra:
    if isinstance(s, np.ndarray):
        span = np.max(s, axis=-1, keepdims=True) - np.min(s, axis=-1, keepdims=True)
        return np.maximum(span, np.finfo(s.dtype).tiny)
    import torch

    # amax/amin: no indices, several times faster than max/min(dim) on a CPU
    hi, lo = s.amax(dim=-1, keepdim=True), s.amin(dim=-1, keepdim=True)
    return (hi - lo).clamp_min(torch.finfo(s.dtype).tiny)


def normalise(s: Spectra, *, polarity: bool = True, out: Spectra | None = None) -> Spectra:
    """Apply the polarity rule (optional) and scale each row to peak-to-peak 1.

    `s` is a floating-point numpy array or torch tensor (..., L); the result is of the
    same kind and dtype (the same arithmetic in both, so the same numbers). `out` may
    be `s` itself (in place) or another array/tensor of its shape.
    """
    if isinstance(s, np.ndarray):
        if polarity:
            sign, ptp = _extrema(s)
            return np.multiply(s, sign / ptp, out=out)
        return np.divide(s, _span(s), out=out)
    import torch

    if polarity:
        sign, ptp = _extrema(s)
        return torch.mul(s, sign / ptp, out=out) if out is not None else s * (sign / ptp)
    ptp = _span(s)
    return torch.div(s, ptp, out=out) if out is not None else s / ptp


@dataclass
class Prepared:
    """A real spectrum on the model's axis, and what was done to get it there."""

    spectrum: np.ndarray  # float32 (n_points,), normalised network input
    flipped: bool  # polarity rule negated the spectrum
    baseline: float  # median subtracted, in the file's units
    scale: float  # peak-to-peak of the baseline-corrected, resampled spectrum (file units)
    coverage: float  # fraction of the model's window covered by the measured sweep
    warnings: list[str] = field(default_factory=list)


def cubic_resample(axis: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`y(x)` (x ascending) at `axis` by piecewise cubic Hermite interpolation, the
    slope at each point that of the parabola through it and its neighbours (second-order
    accurate on any spacing; the ends one-sided), clamped to the ends of `x` outside
    them. Points of one field are averaged first.

    Linear interpolation of a line recorded with few points across it flattens its
    extrema, and the network reads it wider: on clean simulated plate lines (p 0.3, 1,
    2) the shipped plate model read dB wider than at 100 points per width by 0.2-0.7 %
    at 12 points (8: 0.6-1.2 %; 4: 2.5-3.7 %, three of its calibrated sigmas), and by
    -0.1-0.4 % (4: 0.0-0.7 %) with this; B0's scatter fell too (`docs/model_card.md`).
    numpy only (scipy's splines would add most of a second to `infer`'s start-up)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size and np.any(np.diff(x) <= 0):  # repeated fields: one point each, averaged
        x, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        y = np.bincount(inverse, weights=y) / counts
    if x.size < 3:
        return np.interp(axis, x, y)
    h = np.diff(x)
    d = np.diff(y) / h
    m = np.empty_like(y)
    m[1:-1] = (h[1:] * d[:-1] + h[:-1] * d[1:]) / (h[:-1] + h[1:])
    m[0] = d[0] - h[0] * (d[1] - d[0]) / (h[0] + h[1])
    m[-1] = d[-1] + h[-1] * (d[-1] - d[-2]) / (h[-1] + h[-2])
    xa = np.clip(np.asarray(axis, dtype=np.float64), x[0], x[-1])
    i = np.clip(np.searchsorted(x, xa, side="right") - 1, 0, x.size - 2)
    t = (xa - x[i]) / h[i]
    t2, t3 = t * t, t * t * t
    return (
        (2 * t3 - 3 * t2 + 1) * y[i]
        + (t3 - 2 * t2 + t) * h[i] * m[i]
        + (-2 * t3 + 3 * t2) * y[i + 1]
        + (t3 - t2) * h[i] * m[i + 1]
    )


def prepare_real(
    field_g: np.ndarray, intensity: np.ndarray, axis: np.ndarray, *, name: str = "spectrum"
) -> Prepared:
    """Finite points, ascending field, median baseline, resampled onto `axis`, normalised.

    Points of `axis` outside the measured sweep are set to zero (after the baseline
    is removed) and a warning says how much of the window is missing.
    """
    field_g = np.asarray(field_g, dtype=np.float64).ravel()
    intensity = np.asarray(intensity, dtype=np.float64).ravel()
    if field_g.shape != intensity.shape:
        raise ValueError(
            f"{name}: field and intensity differ in length ({field_g.size} vs {intensity.size})"
        )
    warnings: list[str] = []
    ok = np.isfinite(field_g) & np.isfinite(intensity)
    if not ok.all():
        warnings.append(f"{name}: dropped {int((~ok).sum())} non-finite points")
    field_g, intensity = field_g[ok], intensity[ok]
    if field_g.size < 16:
        raise ValueError(f"{name}: only {field_g.size} finite points; need at least 16")
    order = np.argsort(field_g, kind="stable")
    field_g, intensity = field_g[order], intensity[order]
    baseline = float(np.median(intensity))
    y = intensity - baseline
    if not np.ptp(y) > 0:
        raise ValueError(f"{name}: the spectrum is constant; there is no line to read")
    lo, hi = field_g[0], field_g[-1]
    inside = (axis >= lo) & (axis <= hi)
    coverage = float(inside.mean())
    if coverage == 0:
        raise ValueError(
            f"{name}: the sweep {lo:.2f}-{hi:.2f} G does not overlap the model's window "
            f"{axis[0]:.2f}-{axis[-1]:.2f} G"
        )
    if coverage < 1:
        warnings.append(
            f"{name}: the sweep {lo:.2f}-{hi:.2f} G covers only {100 * coverage:.1f} % of the "
            f"model's window {axis[0]:.2f}-{axis[-1]:.2f} G; the rest is set to zero"
        )
    step_file = (hi - lo) / max(field_g.size - 1, 1)
    step_axis = (axis[-1] - axis[0]) / max(axis.size - 1, 1)
    if step_file < 0.5 * step_axis:
        # average over each axis cell before interpolating, so a finely sampled file is
        # not decimated (aliasing its noise); a box of the axis step
        width = int(round(step_axis / step_file))
        kernel = np.ones(width) / width
        y = np.convolve(y, kernel, mode="same")
        resampled = np.interp(axis, field_g, y)
    else:
        resampled = cubic_resample(axis, field_g, y)
    resampled = np.where(inside, resampled, 0.0)
    scale = float(np.ptp(resampled))
    if not scale > 0:
        raise ValueError(f"{name}: the spectrum is constant inside the model's window")
    t = resampled.astype(np.float32)
    sign = float(polarity_sign(t)[0])
    return Prepared(normalise(t), sign < 0, baseline, scale, coverage, warnings)
