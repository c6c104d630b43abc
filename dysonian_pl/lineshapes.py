"""Dysonian (skin-effect) ESR line shapes in pure NumPy.

A conducting sample thicker than the microwave skin depth gives an asymmetric
first-derivative line (Dyson, Feher & Kip).  With the reduced field offset ``x``
the recorded signal is

    S(B) = -A(p) * 2x / (1 + x^2)^2  +  D(p) * (1 - x^2) / (1 + x^2)^2

where ``A`` weights the derivative of the absorption Lorentzian and ``D`` that of
the dispersion.  ``p`` is the sample size over the skin depth (plate: thickness
``d / delta``; sphere: the ratio used by Savchenko et al.).  Fields (``B``, ``B0``,
``dB``) are in gauss; ``p`` and ``alpha`` are dimensionless.

Geometries
----------
``plate``   Feher-Kip flat plate, ``x = 2 (B - B0) / (sqrt(3) dB)`` so that ``dB`` is
            the peak-to-peak width of the symmetric (p -> 0) line.
``sphere``  spherical grains, ``x = (B - B0) / dB``.

Numerics of ``A(p)`` and ``D(p)``
--------------------------------
The closed forms (see ``docs/physics.md``) cancel catastrophically for small ``p``
(sphere below ~0.2, plate ``D`` below ~3e-4) and overflow for large ``p``
(``cosh p``).  Here they are evaluated in two pieces, each accurate to a few
ulps (measured worst case ~1e-13 relative, against mpmath at 80 digits):

* ``p < crossover`` (plate 0.5, sphere 1.0): Taylor series.  Both ``A`` and ``D``
  are even in ``p`` with only every fourth power present,
  ``A = sum_k a_k p^(4k)``, ``D = p^2 sum_k d_k p^(4k)``.  The coefficients below
  are exact rationals obtained offline by power-series arithmetic over
  ``fractions.Fraction``: expand ``sinh, sin, cosh, cos`` to order p^80, form the
  numerators and denominators of the closed forms exactly (for the sphere,
  multiplied through by ``p^4 c^2``, whose leading ``p^8`` factor cancels exactly),
  and divide the series.  The leading terms reproduce the tabulated limits
  (plate ``1 - p^4/10 + 31 p^8/4536``, ``p^2/3 - 17 p^6/630``; sphere
  ``1 - p^4/200 + 967 p^8/43659000``, ``p^2/15 - 13 p^6/37800``).  The series
  converge for ``|p| < pi/sqrt(2)`` (plate; zeros of ``cosh p + cos p``) and
  ``|p| < pi sqrt(2)`` (sphere; zeros of ``cosh p - cos p``), so the terms shrink
  by about ``(p/2.2)^4`` resp. ``(p/4.4)^4``: with 8 terms the first omitted term
  at the crossover is ~1e-22 (plate, p = 0.5) resp. ~1e-21 (sphere, p = 1) of
  the leading one.
* ``p >= crossover``: the closed forms divided through by ``e^p / 2`` and written
  in ``q = e^-p``, e.g. ``cosh p + cos p = (e^p/2) Cp`` with
  ``Cp = (1 - q)^2 + 4 q cos^2(p/2)`` and ``cosh p - cos p = (e^p/2) Cm`` with
  ``Cm = (1 - q)^2 + 4 q sin^2(p/2)`` (sums of non-negative terms, ``1 - q`` by
  ``expm1``), ``sinh p +- sin p = (e^p/2)(1 - q^2 +- 2 q sin p)`` and, for the
  sphere, ``1 - (sinh^2 p - sin^2 p)/c^2 = 4 q (2 q - (1 + q^2) cos p) / Cm^2``
  (exact, so the ``... + 1`` term does not cancel).  Nothing overflows; for
  ``p > ~745`` ``q`` underflows to 0 and the forms reduce exactly to the
  asymptotes ``A = D = 1/(2p)`` (plate) and
  ``A = 9/4 (1/p - 8/p^3 + 8/p^4)``, ``D = 9/4 (1/p - 4/p^2 + 8/p^3)`` (sphere).
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "GEOMETRIES",
    "ad_ratio",
    "dyson_coefficients",
    "dysonian",
    "g_factor",
    "joshi",
    "p_fold",
    "p_twin",
]

GEOMETRIES: tuple[str, ...] = ("plate", "sphere")

# Below these p the Taylor series are used, above them the e^-p rescaled forms.
_CROSSOVER = {"plate": 0.5, "sphere": 1.0}

# Exact Taylor coefficients (see module docstring), as (numerator, denominator):
# A = sum_k a_k t^k and D = p^2 sum_k d_k t^k with t = p^4.
_SERIES_RATIONAL: dict[str, tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]] = {
    "plate": (
        (
            (1, 1),
            (-1, 10),
            (31, 4536),
            (-5461, 13899600),
            (3202291, 154378224000),
            (-4722116521, 4535772564960000),
            (14717667114151, 291301270345008000000),
            (-86125672563201181, 35977221654214282041600000),
        ),
        (
            (1, 3),
            (-17, 630),
            (691, 415800),
            (-929569, 10216206000),
            (221930581, 47517617347200),
            (-56963745931, 247510883299680000),
            (2093660879252671, 189886813797753072000000),
            (-129848163681107301953, 250941121038144617240160000000),
        ),
    ),
    "sphere": (
        (
            (1, 1),
            (-1, 200),
            (967, 43659000),
            (-11083, 136216080000),
            (863573, 3176090742825000),
            (-3950384623, 4594792037575259520000),
            (252563383, 96319398303208080000000),
            (-7588021805502067, 973279785004240900644057600000000),
        ),
        (
            (1, 15),
            (-13, 37800),
            (43, 31531500),
            (-692149, 145887421680000),
            (1406159, 91471413393360000),
            (-1824795421, 38289933646460496000000),
            (80943035891, 564588193079042061930000000),
            (-1584165379667063, 3754079170730643473912793600000000),
        ),
    ),
}

# Correctly rounded float64 values of the rationals above.
_SERIES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    geometry: tuple(tuple(float(Fraction(n, d)) for n, d in coeffs) for coeffs in pair)  # type: ignore[misc]
    for geometry, pair in _SERIES_RATIONAL.items()
}


def _check(name: str, value: ArrayLike, *, allow_zero: bool = False) -> NDArray[np.float64]:
    """Return ``value`` as a float64 array, raising ValueError unless every entry is
    finite and > 0 (or >= 0 with ``allow_zero``)."""
    arr = np.asarray(value, dtype=np.float64)
    finite = np.isfinite(arr)
    ok = finite & ((arr >= 0.0) if allow_zero else (arr > 0.0))
    if not ok.all():
        bad = float(arr[~ok].flat[0])
        bound = ">= 0" if allow_zero else "> 0"
        extra = "" if np.isfinite(bad) else " and finite"
        raise ValueError(f"{name} must be {bound}{extra} (got {bad!r})")
    return arr


def _check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        allowed = ", ".join(repr(g) for g in GEOMETRIES)
        raise ValueError(f"geometry must be one of {allowed} (got {geometry!r})")
    return geometry


def _horner(coeffs: tuple[float, ...], t: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.full_like(t, coeffs[-1])
    for c in coeffs[-2::-1]:
        out *= t
        out += c
    return out


def _series(p: NDArray[np.float64], geometry: str) -> tuple[NDArray, NDArray]:
    a, d = _SERIES[geometry]
    p2 = p * p
    t = p2 * p2
    return _horner(a, t), p2 * _horner(d, t)


def _rescaled(p: NDArray[np.float64], geometry: str) -> tuple[NDArray, NDArray]:
    """Closed forms divided through by e^p/2, in q = e^-p (valid for p >~ 0.1)."""
    q = np.exp(-p)
    s = np.sin(p)
    co = np.cos(p)
    one_m_q = -np.expm1(-p)
    one_m_q2 = -np.expm1(-2.0 * p)  # 1 - q^2
    sp = one_m_q2 + 2.0 * q * s  # (sinh p + sin p) / (e^p/2)
    sm = one_m_q2 - 2.0 * q * s  # (sinh p - sin p) / (e^p/2)
    ss = 2.0 * q * one_m_q2 * s  # sinh p sin p / (e^p/2)^2
    if geometry == "plate":
        cp = one_m_q * one_m_q + 4.0 * q * np.cos(0.5 * p) ** 2  # (cosh p + cos p) / (e^p/2)
        A = sp / (2.0 * p * cp) + (4.0 * q * q + 2.0 * q * (1.0 + q * q) * co) / (cp * cp)
        D = sm / (2.0 * p * cp) + ss / (cp * cp)
        return A, D
    cm = one_m_q * one_m_q + 4.0 * q * np.sin(0.5 * p) ** 2  # (cosh p - cos p) / (e^p/2)
    cm2 = cm * cm
    Sp, Sm, SS = sp / cm, sm / cm, ss / cm2
    one_m_T = 4.0 * q * (2.0 * q - (1.0 + q * q) * co) / cm2  # 1 - (sinh^2 - sin^2)/c^2
    inv = 1.0 / p
    A = 2.25 * ((((8.0 * inv - 8.0 * Sp) * inv + 8.0 * SS) * inv + Sm) * inv + one_m_T)
    D = 2.25 * (((8.0 * Sm * inv - 4.0 * Sp * Sm) * inv + Sp) * inv - 2.0 * SS)
    return A, D


def dyson_coefficients(
    p: ArrayLike, geometry: str = "plate"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Absorption and dispersion weights ``(A, D)`` of a Dysonian line.

    ``p`` (dimensionless, > 0, any shape) is the sample size over the skin depth.
    Returns float64 arrays of the shape of ``p`` (NumPy float64 scalars for a
    scalar ``p``), accurate to ~1e-13 relative for every ``p > 0``.  Limits:
    ``A -> 1, D -> 0`` as ``p -> 0`` (thin sample, symmetric Lorentzian
    derivative); ``A, D ~ 1/(2p)`` (plate) or ``9/(4p)`` (sphere) as ``p -> inf``.
    """
    geometry = _check_geometry(geometry)
    p_arr = _check("p", p)
    A = np.empty_like(p_arr)
    D = np.empty_like(p_arr)
    small = p_arr < _CROSSOVER[geometry]
    if small.any():
        A[small], D[small] = _series(p_arr[small], geometry)
    if not small.all():
        large = ~small
        A[large], D[large] = _rescaled(p_arr[large], geometry)
    return A[()], D[()]


def ad_ratio(p: ArrayLike, geometry: str = "plate") -> NDArray[np.float64]:
    """``A(p) / D(p)``: after peak-to-peak normalisation the line shape depends on
    ``p`` only through this ratio.  It diverges as ``p -> 0``, has a minimum near
    p = 2.6 (plate, ~0.32) or p = 4.6 (sphere, ~1.05) and then oscillates towards
    1, so beyond those points ``p`` is not identifiable from the shape alone."""
    A, D = dyson_coefficients(p, geometry)
    return A / D


def _extremum(geometry: str, lo: float, hi: float, sign: float) -> float:
    """The p in [lo, hi] where ``sign * ad_ratio`` is smallest (golden section; the
    bracket must hold one extremum). Converges to ~1e-8 relative in p: the ratio is
    flat there, so its value is exact to float64 rounding."""
    g = (5**0.5 - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = sign * float(ad_ratio(c, geometry)), sign * float(ad_ratio(d, geometry))
    for _ in range(200):
        if b - a < 1e-12 * b:
            break
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = sign * float(ad_ratio(c, geometry))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = sign * float(ad_ratio(d, geometry))
    return (a + b) / 2


#: brackets of the first minimum and the next maximum of A/D (docs/physics.md)
_FOLD_BRACKET = {"plate": (1.5, 3.5), "sphere": (3.0, 6.0)}
_PEAK_BRACKET = {"plate": (3.5, 6.5), "sphere": (6.0, 9.0)}


@cache
def _fold_points(geometry: str) -> tuple[float, float]:
    """(p of the minimum of A/D, p of the maximum after it)."""
    return (
        _extremum(geometry, *_FOLD_BRACKET[geometry], 1.0),
        _extremum(geometry, *_PEAK_BRACKET[geometry], -1.0),
    )


def p_fold(geometry: str = "plate") -> float:
    """The p where A/D is smallest: 2.6544 (plate), 4.5084 (sphere).

    Below it A/D falls monotonically from infinity, so every line shape of a thin
    enough sample belongs to one p; beyond it A/D rises again and lines repeat shapes
    of smaller p (see `p_twin`).
    """
    return _fold_points(_check_geometry(geometry))[0]


def p_twin(p: ArrayLike, geometry: str = "plate") -> NDArray[np.float64]:
    """The other p that gives exactly the same normalised line shape as ``p``.

    For ``p`` below the fold (`p_fold`) it is the nearest p beyond the fold with the
    same A/D, on the rising stretch up to the next maximum of A/D (plate: p 2.654 to
    4.857, A/D 0.3225 to 1.1644; sphere: 4.508 to 7.323, A/D 1.0564 to 1.4677), NaN
    when A/D(p) is above that maximum (p below about 1.55 plate, 3.43 sphere: no
    twin). Further twins exist at still larger p where A/D oscillates towards 1
    (plate, A/D within 0.989-1.164) or falls back to 1 (sphere); this returns the
    nearest. For ``p`` beyond the fold it is the one p below the fold with the same
    A/D (always exists). Same shape as ``p`` (a float for a scalar); NaN stays NaN.
    """
    geometry = _check_geometry(geometry)
    arr = np.asarray(p, dtype=np.float64)
    finite = np.isfinite(arr)
    if np.any(arr[finite] <= 0):
        raise ValueError("p must be > 0")
    fold, peak = _fold_points(geometry)
    r_peak = float(ad_ratio(peak, geometry))
    out = np.full(arr.shape, np.nan)
    below = finite & (arr < fold)
    beyond = finite & (arr > fold)
    out[finite & (arr == fold)] = fold
    # below the fold: bisect on the rising stretch (fold, peak)
    target = np.where(below, ad_ratio(np.where(below, arr, fold), geometry), np.inf)
    has = below & (target <= r_peak)
    if has.any():
        out[has] = _bisect(target[has], fold, peak, geometry, rising=True)
    if beyond.any():
        t = ad_ratio(arr[beyond], geometry)
        # A/D(p) -> inf as p -> 0: a lower bound where A/D exceeds any target here
        out[beyond] = _bisect(t, 1e-3, fold, geometry, rising=False)
    return out[()] if out.ndim == 0 else out


def _bisect(
    target: NDArray[np.float64], lo: float, hi: float, geometry: str, rising: bool
) -> NDArray[np.float64]:
    """p in [lo, hi] with A/D(p) == target, A/D monotonic there (vectorised bisection)."""
    a = np.full(target.shape, lo)
    b = np.full(target.shape, hi)
    for _ in range(64):
        m = 0.5 * (a + b)
        above = ad_ratio(m, geometry) > target
        go_left = above if rising else ~above
        b = np.where(go_left, m, b)
        a = np.where(go_left, a, m)
    return 0.5 * (a + b)


def _batch(B: NDArray[np.float64], *params: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    """Give 1-D parameter arrays a trailing field axis when ``B`` is not a scalar, so
    that parameters of shape (m,) and a field of shape (n,) (or (m, n)) broadcast to
    (m, n).  Other shapes are left to ordinary NumPy broadcasting."""
    if B.ndim == 0:
        return list(params)
    return [x[:, None] if x.ndim == 1 else x for x in params]


def dysonian(
    B: ArrayLike,
    B0: ArrayLike,
    dB: ArrayLike,
    p: ArrayLike,
    geometry: str = "plate",
) -> NDArray[np.float64]:
    """Unnormalised first-derivative Dysonian signal
    ``S(B) = -A(p) 2x/(1+x^2)^2 + D(p) (1-x^2)/(1+x^2)^2``.

    ``B`` is the field axis and ``B0`` the resonance field (gauss); ``dB`` (gauss,
    > 0) is the width: plate ``x = 2 (B - B0) / (sqrt(3) dB)`` (``dB`` = peak-to-peak
    width of the symmetric line), sphere ``x = (B - B0) / dB``.  ``p`` > 0 is the
    size over skin depth.  Both A and D are positive, so a whole line inside the
    window has its low-field lobe positive.

    Broadcasting: with ``B`` of shape (n,) and ``B0``, ``dB``, ``p`` scalars or 1-D
    arrays of shape (m,), the result has shape (m, n) (one row per parameter set);
    ``B`` of shape (m, n) with (m,) parameters works the same way.  Parameters with
    two or more dimensions broadcast against ``B`` as NumPy does.
    """
    geometry = _check_geometry(geometry)
    B = np.asarray(B, dtype=np.float64)
    dB = _check("dB", dB)
    B0 = np.asarray(B0, dtype=np.float64)
    A, D = dyson_coefficients(p, geometry)
    A, D = np.asarray(A), np.asarray(D)
    B0, dB, A, D = _batch(B, B0, dB, A, D)
    scale = (2.0 / np.sqrt(3.0)) / dB if geometry == "plate" else 1.0 / dB
    # S = (D - x (D x + 2 A)) / (1 + x^2)^2, with two full-size temporaries.
    shape = np.broadcast_shapes(B.shape, B0.shape, np.shape(scale), A.shape)
    x = np.subtract(B, B0, out=np.empty(shape))
    x *= scale
    num = np.multiply(x, D, out=np.empty(shape))
    num += 2.0 * A
    num *= x
    np.subtract(D, num, out=num)
    np.multiply(x, x, out=x)
    x += 1.0
    x *= x
    num /= x
    return num[()] if num.ndim == 0 else num


def joshi(
    B: ArrayLike,
    B0: ArrayLike,
    dB: ArrayLike,
    alpha: ArrayLike,
) -> NDArray[np.float64]:
    """First derivative dP/dB of a wide line with its mirror at -B0 (Joshi et al.).

    Absorption (``dB`` = FWHM in gauss, ``alpha`` >= 0 the dispersion admixture):

        P(B) = (dB + alpha u) / (4 u^2 + dB^2) + (dB - alpha v) / (4 v^2 + dB^2),
        u = B - B0,  v = B + B0,

    differentiated analytically:

        dP/dB = (alpha dB^2 - 4 alpha u^2 - 8 dB u) / (4 u^2 + dB^2)^2
              + (4 alpha v^2 - alpha dB^2 - 8 dB v) / (4 v^2 + dB^2)^2.

    Broadcasting as in :func:`dysonian`.  Unnormalised, float64.
    """
    B = np.asarray(B, dtype=np.float64)
    dB = _check("dB", dB)
    alpha = _check("alpha", alpha, allow_zero=True)
    B0 = np.asarray(B0, dtype=np.float64)
    B0, dB, alpha = _batch(B, B0, dB, alpha)
    dB2 = dB * dB
    u = B - B0
    v = B + B0
    u2 = u * u
    v2 = v * v
    den_u = 4.0 * u2 + dB2
    den_v = 4.0 * v2 + dB2
    out = (alpha * (dB2 - 4.0 * u2) - 8.0 * dB * u) / (den_u * den_u) + (
        alpha * (4.0 * v2 - dB2) - 8.0 * dB * v
    ) / (den_v * den_v)
    return out[()] if out.ndim == 0 else out


# h / mu_B in gauss per megahertz: h exact (SI 2019), mu_B = 9.2740100657e-24 J/T (CODATA
# 2022); 1 T = 1e4 G. g = h nu / (mu_B B0).
_H_OVER_MU_B_G_PER_MHZ = 6.62607015e-34 / 9.2740100657e-24 * 1e4 * 1e6  # 0.71447735


def g_factor(frequency_ghz, field_g):
    """The g factor h nu / (mu_B B) of a line at ``field_g`` (G) in a spectrometer at
    ``frequency_ghz`` (GHz); arrays broadcast. (9.5 GHz and 3389.8 G: 2.0023, a free
    electron.)"""
    nu_mhz = np.asarray(frequency_ghz, dtype=np.float64) * 1e3
    return _H_OVER_MU_B_G_PER_MHZ * nu_mhz / np.asarray(field_g, dtype=np.float64)
