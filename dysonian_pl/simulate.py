"""Simulated training spectra: the prior work's recipe, vectorised and reproducible.

Every spectrum is a pure function of (config, seed, index): its random draws come from
a counter-based hash of (seed, index, stream), so the same index gives the same
spectrum whatever the chunk size, worker count or device count. No global random
state is read or written.

Recipe per spectrum (physics.md): draw B0, dB, p uniformly -> clean line on
linspace(Bmin, Bmax, n) (the field-calibration warp is applied by evaluating the
line on the warped axis, which is what resampling a warped analytic line gives)
-> polarity rule -> normalise to peak-to-peak 1 -> modulation smoothing -> white
noise at the drawn SNR (signal power = the smoothed line's, baseline excluded) ->
baseline offset/slope/curvature on t in [-1, 1] -> spikes -> divide by peak-to-peak.

White noise comes from a bank of 2**23 standard normals generated once per seed; each
spectrum reads a contiguous slice of it at a hashed offset with a hashed sign. Every
noise vector is exactly i.i.d. Gaussian; two spectra share noise only if their
offsets fall within n_points of each other, and then with the line at a different
place. This keeps noise generation a memory copy (the simulator's hot path).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .lineshapes import dyson_coefficients, joshi
from .params import SimulationConfig
from .params import field_axis as field_axis  # re-exported: torch-free in params
from .preprocess import normalise

_NOISE_BANK_SIZE = 1 << 23
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)

# Independent random streams per spectrum (never renumber: that changes every data set).
_S_B0, _S_DB, _S_P = 0, 1, 2
_S_SMOOTH, _S_SIGMA = 3, 4
_S_SCALE, _S_OFFSET = 5, 6
_S_BASE0, _S_BASE1, _S_BASE2 = 7, 8, 9
_S_SNR, _S_NOISE_OFF, _S_NOISE_SIGN = 10, 11, 12
_S_SPIKE, _S_SPIKE_N = 13, 14
_S_SPIKE_POS, _S_SPIKE_AMP, _S_SPIKE_HW, _S_SPIKE_SIGN = 16, 18, 20, 22  # two slots each


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """U[0, 1) draws, one per index, from a counter-based hash of (seed, index, stream)."""
    idx = np.asarray(index, dtype=np.uint64)
    key = _splitmix64(
        np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        ^ np.uint64(stream * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF)
    )
    bits = _splitmix64(_splitmix64(idx ^ key) + np.uint64(stream))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _draw(seed: int, index: np.ndarray, stream: int, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * uniform(seed, index, stream)


@lru_cache(maxsize=2)
def _noise_bank(seed: int, n_points: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(
        int(_splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))) & 0x7FFFFFFFFFFFFFFF
    )
    bank = torch.randn(_NOISE_BANK_SIZE, generator=g, dtype=torch.float32)
    return torch.cat([bank, bank[:n_points]])  # wrap-around so every offset has a full slice


def draw_targets(cfg: SimulationConfig, seed: int, index: np.ndarray) -> np.ndarray:
    """The (B0, dB, p) (or alpha for wide lines) of each spectrum, float64 (N, 3)."""
    names = cfg.target_names
    streams = (_S_B0, _S_DB, _S_P)
    y = np.stack(
        [_draw(seed, index, s, *getattr(cfg, n)) for n, s in zip(names, streams, strict=True)],
        axis=1,
    )
    if cfg.log_dB:
        lo, hi = np.log(cfg.dB[0]), np.log(cfg.dB[1])
        if cfg.dB_narrow is None:
            y[:, 1] = np.exp(_draw(seed, index, _S_DB, lo, hi))
        else:  # the inverse CDF of two log-uniform pieces, from the same uniform stream
            width, share = cfg.dB_narrow
            mid = np.log(width)
            u = uniform(seed, index, _S_DB)
            below = lo + (mid - lo) * (u / share)
            above = mid + (hi - mid) * ((u - share) / (1.0 - share))
            y[:, 1] = np.exp(np.where(u < share, below, above))
    return y


def line_shape(x: torch.Tensor, A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """S = -A 2x/(1+x^2)^2 + D (1-x^2)/(1+x^2)^2, the torch twin of `lineshapes.dysonian`.

    `x` is the reduced field (plate 2(B-B0)/(sqrt(3) dB), sphere (B-B0)/dB); `x` is
    overwritten (the simulator's hot path works in place). With u = 1 + x^2 the
    numerator is 2D - 2A x - D u.
    """
    s = torch.addcmul(2.0 * D, A, x, value=-2.0)  # 2D - 2A x
    u = x.mul_(x).add_(1.0)
    s.addcmul_(D, u, value=-1.0)
    r = u.reciprocal_()
    return s.mul_(r).mul_(r)


def reduced_field_scale(geometry: str) -> float:
    """x = (B - B0) * scale / dB."""
    return 2.0 / math.sqrt(3.0) if geometry == "plate" else 1.0


def _clean_lines(
    cfg: SimulationConfig, seed: int, index: np.ndarray, y: np.ndarray
) -> torch.Tensor:
    aug = cfg.augment
    n = cfg.n_points
    w_lo, w_hi = cfg.window
    step = (w_hi - w_lo) / (n - 1)
    scale = _draw(seed, index, _S_SCALE, *aug.field_scale)
    offset = _draw(seed, index, _S_OFFSET, -aug.field_offset_g, aug.field_offset_g)
    B0, dB, third = y[:, 0], y[:, 1], y[:, 2]
    # warped axis B' = scale * B + offset; (B' - B0) = (scale*w_lo + offset - B0) + scale*step*i
    start = scale * w_lo + offset - B0
    inc = scale * step
    if cfg.wide:
        i = np.arange(n, dtype=np.float64)
        B_true = (start + B0)[:, None] + inc[:, None] * i
        lines = joshi(B_true, B0[:, None], dB[:, None], third[:, None])
        return torch.from_numpy(np.asarray(lines, dtype=np.float32))
    k = reduced_field_scale(cfg.geometry)
    A, D = dyson_coefficients(third, cfg.geometry)

    def col(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(v, dtype=np.float32))[:, None]

    x = torch.addmm(col(start * k / dB), col(inc * k / dB), _ramp(n))
    return line_shape(x, col(A), col(D))


@lru_cache(maxsize=4)
def _ramp(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)[None]


@lru_cache(maxsize=4)
def _baseline_basis(n: int) -> torch.Tensor:
    t = torch.linspace(-1.0, 1.0, n, dtype=torch.float32)
    return torch.stack([torch.ones_like(t), t, t * t])


def _smooth(s: torch.Tensor, sigma: np.ndarray, sigma_max: float) -> torch.Tensor:
    """Gaussian smoothing with one sigma (points) per row, replicate-padded edges.

    The kernel half-width comes from the configured largest sigma, not from the rows
    at hand, so a spectrum never depends on the others simulated with it.
    """
    half = int(math.ceil(4 * sigma_max))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    sig = torch.from_numpy(sigma.astype(np.float32))[:, None]
    k = torch.exp(-0.5 * (t / sig) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    padded = F.pad(s[None], (half, half), mode="replicate")
    return F.conv1d(padded, k[:, None, :], groups=s.shape[0])[0]


def simulate(
    cfg: SimulationConfig, seed: int, index: np.ndarray | range | int, *, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectra (N, n_points) float32, peak-to-peak 1, and targets (N, 3) float64.

    `index` are sample indices; the result for one index never depends on which
    other indices are simulated with it, nor on `chunk`.
    """
    index = np.atleast_1d(np.asarray(index, dtype=np.int64))
    if index.ndim != 1:
        raise ValueError(f"index must be one-dimensional (got shape {index.shape})")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (got {chunk})")
    out = torch.empty(len(index), cfg.n_points, dtype=torch.float32)
    y = draw_targets(cfg, seed, index)
    for a in range(0, len(index), chunk):
        _simulate_chunk(cfg, seed, index[a : a + chunk], y[a : a + chunk], out[a : a + chunk])
    return out, torch.from_numpy(y)


def _simulate_chunk(
    cfg: SimulationConfig,
    seed: int,
    index: np.ndarray,
    y: np.ndarray,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    aug = cfg.augment
    n = cfg.n_points
    s = _clean_lines(cfg, seed, index, y)
    s = normalise(s, out=s)

    if aug.smooth_prob > 0:
        rows = np.flatnonzero(uniform(seed, index, _S_SMOOTH) < aug.smooth_prob)
        if rows.size:
            sigma = _draw(seed, index[rows], _S_SIGMA, *aug.smooth_sigma_points)
            s[rows] = _smooth(s[rows], sigma, aug.smooth_sigma_points[1])

    if aug.noise:
        # sigma = rms(line) * 10^(-snr/20), with a hashed sign per spectrum
        rms = torch.linalg.vector_norm(s, dim=1, keepdim=True).mul_(n**-0.5)
        snr = _draw(seed, index, _S_SNR, *aug.snr_db)
        sign = np.where(uniform(seed, index, _S_NOISE_SIGN) < 0.5, -1.0, 1.0)
        sigma = rms.mul_(
            torch.from_numpy((sign * 10.0 ** (-snr / 20.0)).astype(np.float32))[:, None]
        )
        offsets = (uniform(seed, index, _S_NOISE_OFF) * _NOISE_BANK_SIZE).astype(np.int64)
        windows = _noise_bank(seed, n).unfold(0, n, 1)  # view: row k is bank[k : k + n]
        s.addcmul_(sigma, windows[torch.from_numpy(offsets)])

    if aug.baseline_offset or aug.baseline_slope or aug.baseline_curvature:
        coef = np.stack(
            [
                _draw(seed, index, st, -amp, amp)
                for st, amp in (
                    (_S_BASE0, aug.baseline_offset),
                    (_S_BASE1, aug.baseline_slope),
                    (_S_BASE2, aug.baseline_curvature),
                )
            ],
            axis=1,
        )
        s.addmm_(torch.from_numpy(coef.astype(np.float32)), _baseline_basis(n))

    if aug.spike_prob > 0:
        rows = np.flatnonzero(uniform(seed, index, _S_SPIKE) < aug.spike_prob)
        if rows.size:
            s[rows] = s[rows] + _spikes(cfg, seed, index[rows])

    return normalise(s, polarity=False, out=out)


def _spikes(cfg: SimulationConfig, seed: int, index: np.ndarray) -> torch.Tensor:
    aug = cfg.augment
    n = cfg.n_points
    lo_n, hi_n = aug.spike_count
    count = lo_n + np.floor(uniform(seed, index, _S_SPIKE_N) * (hi_n - lo_n + 1)).astype(np.int64)
    i = torch.arange(n, dtype=torch.float32)
    total = torch.zeros(len(index), n)
    for k in range(hi_n):
        active = count > k
        if not active.any():
            break
        pos = _draw(seed, index, _S_SPIKE_POS + k, 0.0, n - 1.0)
        amp = _draw(seed, index, _S_SPIKE_AMP + k, *aug.spike_amplitude)
        hw = _draw(seed, index, _S_SPIKE_HW + k, *aug.spike_half_width_points)
        sign = np.where(uniform(seed, index, _S_SPIKE_SIGN + k) < 0.5, -1.0, 1.0)
        a = torch.from_numpy((amp * sign * active).astype(np.float32))[:, None]
        z = (i - torch.from_numpy(pos.astype(np.float32))[:, None]) / torch.from_numpy(
            hw.astype(np.float32)
        )[:, None]
        total += a * torch.exp(-math.log(2.0) * z * z)  # half width at half maximum = hw points
    return total
