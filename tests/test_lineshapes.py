"""Tests of dysonian_pl.lineshapes against arbitrary-precision (mpmath) references."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from dysonian_pl.lineshapes import (
    _CROSSOVER,
    GEOMETRIES,
    ad_ratio,
    dyson_coefficients,
    dysonian,
    joshi,
    p_fold,
    p_twin,
)

RTOL = 1e-9


# --------------------------------------------------------------------------- references
def _ref_AD(p, geometry: str):
    """A and D from the LITERAL closed forms of docs/physics.md, as mpf at the current
    working precision."""
    p = mp.mpf(p)
    sh, s, ch, c = mp.sinh(p), mp.sin(p), mp.cosh(p), mp.cos(p)
    if geometry == "plate":
        den = ch + c
        A = (sh + s) / (2 * p * den) + (1 + ch * c) / den**2
        D = (sh - s) / (2 * p * den) + sh * s / den**2
        return A, D
    cc = ch - c
    A = (
        8 / p**4
        - 8 * (sh + s) / (p**3 * cc)
        + 8 * sh * s / (p**2 * cc**2)
        + (sh - s) / (p * cc)
        - (sh**2 - s**2) / cc**2
        + 1
    )
    D = (
        8 * (sh - s) / (p**3 * cc)
        - 4 * (sh**2 - s**2) / (p**2 * cc**2)
        + (sh + s) / (p * cc)
        - 2 * sh * s / cc**2
    )
    return A * mp.mpf(9) / 4, D * mp.mpf(9) / 4


def ref_coefficients(p: float, geometry: str, dps: int = 80) -> tuple[float, float]:
    """The literal closed forms evaluated with `dps` digits."""
    with mp.workdps(dps):
        A, D = _ref_AD(p, geometry)
        return float(A), float(D)


def ref_dysonian(B: float, B0: float, dB: float, p: float, geometry: str) -> float:
    A, D = ref_coefficients(p, geometry)
    with mp.workdps(40):
        if geometry == "plate":
            x = 2 * (mp.mpf(B) - B0) / (mp.sqrt(3) * dB)
        else:
            x = (mp.mpf(B) - B0) / dB
        return float((-A * 2 * x + D * (1 - x**2)) / (1 + x**2) ** 2)


def absorption(B, B0, dB, alpha):
    """Joshi et al. absorption P(B) (the function whose derivative `joshi` returns)."""
    return (dB + alpha * (B - B0)) / (4 * (B - B0) ** 2 + dB**2) + (dB - alpha * (B + B0)) / (
        4 * (B + B0) ** 2 + dB**2
    )


def rel_err(got, want):
    got, want = np.asarray(got, float), np.asarray(want, float)
    return np.abs(got - want) / np.abs(want)


def _grid() -> np.ndarray:
    base = np.geomspace(1e-6, 1e3, 200)
    near = [x * f for x in _CROSSOVER.values() for f in (0.999, 1 - 1e-12, 1.0, 1 + 1e-12, 1.001)]
    return np.unique(np.concatenate([base, near, [0.1, 0.2, 3e-4, 700.0, 710.0, 750.0]]))


# --------------------------------------------------------------------------- coefficients
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_coefficients_match_mpmath_on_log_grid(geometry):
    ps = _grid()
    A, D = dyson_coefficients(ps, geometry)
    ref = np.array([ref_coefficients(p, geometry) for p in ps])
    assert A.shape == D.shape == ps.shape
    assert A.dtype == D.dtype == np.float64
    errA, errD = rel_err(A, ref[:, 0]), rel_err(D, ref[:, 1])
    assert errA.max() <= RTOL, (ps[errA.argmax()], errA.max())
    assert errD.max() <= RTOL, (ps[errD.argmax()], errD.max())


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_coefficients_continuous_across_crossover(geometry):
    pc = _CROSSOVER[geometry]
    A, D = dyson_coefficients(np.array([np.nextafter(pc, 0.0), pc]), geometry)
    assert abs(A[1] / A[0] - 1) < 1e-13
    assert abs(D[1] / D[0] - 1) < 1e-13


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_coefficients_extreme_p_finite_positive(geometry):
    ps = np.array([1e-8, 1e-6, 1e4, 1e6])
    A, D = dyson_coefficients(ps, geometry)
    assert np.all(np.isfinite(A)) and np.all(np.isfinite(D))
    assert np.all(A > 0) and np.all(D > 0)
    # tiny p against the literal formulas at high precision
    for p, a, d in zip(ps[:2], A[:2], D[:2], strict=True):
        ra, rd = ref_coefficients(p, geometry, dps=120)
        assert rel_err(a, ra) <= RTOL and rel_err(d, rd) <= RTOL
    # huge p against the asymptotic forms (e^-p corrections are far below 1e-300)
    big = ps[2:]
    if geometry == "plate":
        wantA = wantD = 1 / (2 * big)
    else:
        wantA = 2.25 * (1 / big - 8 / big**3 + 8 / big**4)
        wantD = 2.25 * (1 / big - 4 / big**2 + 8 / big**3)
    assert np.all(rel_err(A[2:], wantA) <= RTOL)
    assert np.all(rel_err(D[2:], wantD) <= RTOL)


def test_coefficient_shapes_and_scalars():
    A, D = dyson_coefficients(1.3)
    assert np.ndim(A) == 0 and np.ndim(D) == 0
    assert isinstance(float(A), float)
    grid = np.linspace(0.1, 5.0, 6).reshape(2, 3)
    for geometry in GEOMETRIES:
        A, D = dyson_coefficients(grid, geometry)
        assert A.shape == D.shape == (2, 3)
        np.testing.assert_allclose(ad_ratio(grid, geometry), A / D, rtol=0)
    # the default geometry is the plate
    np.testing.assert_array_equal(dyson_coefficients(2.0), dyson_coefficients(2.0, "plate"))


@pytest.mark.parametrize(
    ("geometry", "small_A", "small_D"),
    [
        (
            "plate",
            lambda p: 1 - p**4 / 10 + 31 * p**8 / 4536,
            lambda p: p**2 / 3 - 17 * p**6 / 630,
        ),
        (
            "sphere",
            lambda p: 1 - p**4 / 200 + 967 * p**8 / 43659000,
            lambda p: p**2 / 15 - 13 * p**6 / 37800,
        ),
    ],
)
def test_small_p_limits(geometry, small_A, small_D):
    ps = np.array([1e-3, 1e-2, 3e-2])
    A, D = dyson_coefficients(ps, geometry)
    # next terms are O(p^12) resp. O(p^10) relative: < 1e-14 at p = 0.03
    np.testing.assert_allclose(A, small_A(ps), rtol=1e-13)
    np.testing.assert_allclose(D, small_D(ps), rtol=1e-13)
    A0, D0 = dyson_coefficients(1e-5, geometry)
    assert A0 == pytest.approx(1.0, rel=1e-15)
    assert D0 == pytest.approx((1 / 3 if geometry == "plate" else 1 / 15) * 1e-10, rel=1e-15)


@pytest.mark.parametrize("p", [40.0, 100.0, 1e3])
def test_large_p_limits(p):
    A, D = dyson_coefficients(p, "plate")
    assert A == pytest.approx(1 / (2 * p), rel=1e-13)
    assert D == pytest.approx(1 / (2 * p), rel=1e-13)
    A, D = dyson_coefficients(p, "sphere")
    assert A == pytest.approx(2.25 * (1 / p - 8 / p**3 + 8 / p**4), rel=1e-13)
    assert D == pytest.approx(2.25 * (1 / p - 4 / p**2 + 8 / p**3), rel=1e-13)


@pytest.mark.parametrize(
    ("geometry", "p_min", "ratio_min", "bounds"),
    [("plate", 2.6, 0.32, (1.5, 4.0)), ("sphere", 4.6, 1.05, (3.0, 6.5))],
)
def test_ad_ratio_minimum(geometry, p_min, ratio_min, bounds):
    res = minimize_scalar(lambda p: float(ad_ratio(p, geometry)), bounds=bounds, method="bounded")
    assert abs(res.x - p_min) <= 0.1
    assert abs(res.fun - ratio_min) <= 0.02
    # A/D diverges for thin samples and tends to 1 for thick ones
    assert ad_ratio(1e-3, geometry) > 1e5
    assert ad_ratio(1e4, geometry) == pytest.approx(1.0, abs=1e-3)


def ref_ad(p, geometry: str, dps: int = 50):
    """A/D from the literal closed forms at `dps` digits, as an mpf."""
    with mp.workdps(dps):
        A, D = _ref_AD(p, geometry)
        return A / D


@pytest.mark.parametrize(("geometry", "start"), [("plate", 2.65), ("sphere", 4.5)])
def test_p_fold_is_the_minimum_of_ad(geometry, start):
    h = mp.mpf(10) ** -25  # central difference at 80 digits: exact to ~1e-30

    def slope(q):
        return (ref_ad(q + h, geometry, 80) - ref_ad(q - h, geometry, 80)) / (2 * h)

    with mp.workdps(80):
        ref = mp.findroot(slope, (mp.mpf(start) - 0.1, mp.mpf(start) + 0.1), solver="anderson")
    assert p_fold(geometry) == pytest.approx(float(ref), rel=1e-7)
    assert p_fold(geometry) == pytest.approx(
        {"plate": 2.65442, "sphere": 4.50850}[geometry], abs=1e-5
    )


@pytest.mark.parametrize(
    ("geometry", "p"),
    [("plate", 2.0), ("plate", 1.6), ("plate", 2.5), ("plate", 3.0),
     ("sphere", 4.0), ("sphere", 3.6), ("sphere", 5.0)],
)  # fmt: skip
def test_p_twin_gives_the_same_ad_to_mpmath_precision(geometry, p):
    """The twin solves A/D(twin) = A/D(p) for the literal closed forms at 50 digits."""
    got = float(p_twin(p, geometry))
    fold = p_fold(geometry)
    assert (got - fold) * (p - fold) < 0  # on the other side of the fold
    with mp.workdps(50):
        target = ref_ad(p, geometry)
        ref = mp.findroot(lambda q: ref_ad(q, geometry) - target, got)
    assert got == pytest.approx(float(ref), rel=1e-9)
    # and the two normalised line shapes are the same
    B = np.linspace(-60.0, 60.0, 2001)
    a, b = dysonian(B, 0.0, 10.0, p, geometry), dysonian(B, 0.0, 10.0, got, geometry)
    a, b = a / np.ptp(a), b / np.ptp(b)
    assert np.max(np.abs(a - b)) < 1e-9


def test_p_twin_values_and_edges():
    # numbers pinned from the mpmath check above (docs/model_card.md quotes them)
    assert float(p_twin(2.0, "plate")) == pytest.approx(3.351869, abs=1e-5)
    assert float(p_twin(4.0, "sphere")) == pytest.approx(5.082813, abs=1e-5)
    # thin samples have no twin; the nearest twin of a thick one is below the fold
    got = p_twin(np.array([0.05, 0.5, 1.0, 1.5, 4.0, np.nan]), "plate")
    assert np.isnan(got[[0, 1, 2, 5]]).all()
    assert float(p_twin(1.6, "plate")) == pytest.approx(4.13, abs=0.01)
    assert np.isnan(p_twin(3.0, "sphere"))
    assert got[4] == pytest.approx(1.6377, abs=1e-3)
    assert p_twin(float(p_twin(2.2, "plate")), "plate") == pytest.approx(2.2, rel=1e-12)
    assert p_twin(np.ones((2, 3)), "plate").shape == (2, 3)
    with pytest.raises(ValueError, match="p must be > 0"):
        p_twin(-1.0)


# --------------------------------------------------------------------------- dysonian
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_dysonian_matches_mpmath_with_batch_broadcasting(geometry):
    B = np.linspace(3000.0, 3700.0, 57)
    B0 = np.array([3350.0, 3310.0, 3420.0, 3333.3])
    dB = np.array([25.0, 80.0, 5.0, 140.0])
    p = np.array([0.05, 1.0, 4.6, 300.0])
    S = dysonian(B, B0, dB, p, geometry)
    assert S.shape == (4, 57) and S.dtype == np.float64
    ref = np.array(
        [
            [ref_dysonian(b, b0, w, q, geometry) for b in B]
            for b0, w, q in zip(B0, dB, p, strict=True)
        ]
    )
    np.testing.assert_allclose(S, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    # scalar parameters, per-row field, column parameters: all the same rows
    np.testing.assert_allclose(dysonian(B, B0[1], dB[1], p[1], geometry), S[1], rtol=1e-15)
    np.testing.assert_allclose(dysonian(np.tile(B, (4, 1)), B0, dB, p, geometry), S, rtol=1e-15)
    np.testing.assert_allclose(
        dysonian(B, B0[:, None], dB[:, None], p[:, None], geometry), S, rtol=1e-15
    )
    assert np.ndim(dysonian(B[3], B0[1], dB[1], p[1], geometry)) == 0
    assert dysonian(B[3], B0[1], dB[1], p[1], geometry) == pytest.approx(S[1, 3], rel=1e-15)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("p", [1e-6, 0.5, 2.0, 6.0, 1e3])
def test_low_field_lobe_positive(geometry, p):
    B0, dB = 3400.0, 20.0
    B = np.linspace(B0 - 30 * dB, B0 + 30 * dB, 20001)
    S = dysonian(B, B0, dB, p, geometry)
    low = S[B < B0]
    assert low.max() > 0
    assert low.max() > -low.min()  # the dominant low-field lobe is the positive one


@pytest.mark.parametrize(("geometry", "factor"), [("plate", 1.0), ("sphere", 2 / math.sqrt(3))])
def test_symmetric_line_peak_to_peak_width(geometry, factor):
    """p -> 0: -2x/(1+x^2)^2 has extrema at x = -+1/sqrt(3), i.e. B - B0 = -+dB/2 for
    the plate scaling (peak-to-peak width == dB) and -+dB/sqrt(3) for the sphere."""
    B0, dB = 3300.0, 12.0
    B = np.linspace(B0 - 3 * dB, B0 + 3 * dB, 600001)  # step 1.2e-4 G
    S = dysonian(B, B0, dB, 1e-6, geometry)
    lo, hi = B[np.argmax(S)], B[np.argmin(S)]
    step = B[1] - B[0]
    assert lo == pytest.approx(B0 - factor * dB / 2, abs=2 * step)
    assert hi == pytest.approx(B0 + factor * dB / 2, abs=2 * step)
    assert hi - lo == pytest.approx(factor * dB, abs=2 * step)
    # odd about B0 when D -> 0
    np.testing.assert_allclose(S, -S[::-1], atol=1e-9 * np.abs(S).max())


# --------------------------------------------------------------------------- joshi
@pytest.mark.parametrize(
    ("B0", "dB", "alpha"), [(3000.0, 1500.0, 0.0), (1200.0, 2500.0, 0.7), (800.0, 4000.0, 2.0)]
)
def test_joshi_is_derivative_of_absorption(B0, dB, alpha):
    B = np.linspace(0.0, 12000.0, 241)
    h = 1e-3
    fd = (absorption(B + h, B0, dB, alpha) - absorption(B - h, B0, dB, alpha)) / (2 * h)
    got = joshi(B, B0, dB, alpha)
    scale = np.abs(got).max()
    np.testing.assert_allclose(got, fd, rtol=0, atol=1e-7 * scale)
    # exact check at a few points with mpmath differentiation
    for b in B[::60]:
        want = mp.diff(lambda t: absorption(t, mp.mpf(B0), mp.mpf(dB), mp.mpf(alpha)), mp.mpf(b))
        assert float(joshi(b, B0, dB, alpha)) == pytest.approx(
            float(want), rel=1e-12, abs=1e-15 * scale
        )


def test_joshi_reduces_to_lorentzian_derivative_for_narrow_lines():
    B0, dB = 3400.0, 2.0
    B = np.linspace(B0 - 20 * dB, B0 + 20 * dB, 801)
    u = B - B0
    lorentz = -8 * dB * u / (4 * u**2 + dB**2) ** 2
    got = joshi(B, B0, dB, 0.0)
    np.testing.assert_allclose(got, lorentz, rtol=0, atol=1e-8 * np.abs(lorentz).max())
    # symmetric shape: odd about B0, extrema at B0 -+ dB / (2 sqrt(3))
    np.testing.assert_allclose(got, -got[::-1], atol=1e-8 * np.abs(got).max())
    fine = np.linspace(B0 - dB, B0 + dB, 200001)
    Sf = joshi(fine, B0, dB, 0.0)
    step = fine[1] - fine[0]
    assert fine[np.argmax(Sf)] == pytest.approx(B0 - dB / (2 * math.sqrt(3)), abs=2 * step)
    assert fine[np.argmin(Sf)] == pytest.approx(B0 + dB / (2 * math.sqrt(3)), abs=2 * step)


def test_joshi_broadcasting():
    B = np.linspace(0.0, 8000.0, 33)
    B0 = np.array([2000.0, 3000.0])
    dB = np.array([1500.0, 3000.0])
    alpha = np.array([0.0, 1.0])
    S = joshi(B, B0, dB, alpha)
    assert S.shape == (2, 33) and S.dtype == np.float64
    np.testing.assert_allclose(S[1], joshi(B, 3000.0, 3000.0, 1.0), rtol=1e-15)
    np.testing.assert_allclose(joshi(B, B0[:, None], dB[:, None], alpha[:, None]), S, rtol=1e-15)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dyson_coefficients(-1.0), "p must be > 0 (got -1.0)"),
        (lambda: dyson_coefficients(0.0, "sphere"), "p must be > 0 (got 0.0)"),
        (lambda: dyson_coefficients([1.0, np.nan]), "p must be > 0 and finite (got nan)"),
        (lambda: dyson_coefficients(np.inf), "p must be > 0 and finite (got inf)"),
        (
            lambda: dyson_coefficients(1.0, "cube"),
            "geometry must be one of 'plate', 'sphere' (got 'cube')",
        ),
        (lambda: ad_ratio(1.0, "disc"), "geometry must be one of 'plate', 'sphere' (got 'disc')"),
        (lambda: dysonian([1.0, 2.0], 1.5, 0.0, 1.0), "dB must be > 0 (got 0.0)"),
        (lambda: dysonian([1.0, 2.0], 1.5, [1.0, -2.0], 1.0), "dB must be > 0 (got -2.0)"),
        (lambda: dysonian([1.0, 2.0], 1.5, 1.0, -3.0), "p must be > 0 (got -3.0)"),
        (
            lambda: dysonian([1.0, 2.0], 1.5, 1.0, 1.0, "cube"),
            "geometry must be one of 'plate', 'sphere'",
        ),
        (lambda: joshi([1.0, 2.0], 1.5, 1.0, -0.5), "alpha must be >= 0 (got -0.5)"),
        (lambda: joshi([1.0, 2.0], 1.5, 1.0, np.nan), "alpha must be >= 0 and finite (got nan)"),
        (lambda: joshi([1.0, 2.0], 1.5, -1.0, 0.5), "dB must be > 0 (got -1.0)"),
    ],
)
def test_invalid_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


def test_alpha_zero_allowed():
    assert np.isfinite(joshi(1.0, 1.5, 1.0, 0.0))
