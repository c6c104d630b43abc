"""The sigma calibration of window-agnostic models (dysonian_pl.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from dysonian_pl.calibration import (
    BIAS_FEATURES,
    DEBIASED,
    FEATURES,
    HATS,
    ONE_SIGMA,
    SHARED,
    TWO_SIGMA,
    apply_bias,
    apply_calibration,
    beyond_range,
    features,
    fit_calibration,
)
from dysonian_pl.lineshapes import p_fold


def _synthetic(n: int, seed: int = 0):
    """Predictions whose true error scale is k times the reported sigma, k set by zoom
    state, the line's distance to the window's end and p / p_fold (all log-linear in the
    features): the calibration must learn k."""
    rng = np.random.default_rng(seed)
    fold = p_fold("plate")
    truth = np.column_stack(
        [rng.uniform(100, 900, n), np.exp(rng.uniform(np.log(10), np.log(500), n)),
         rng.uniform(0.15, 2.65, n)]
    )  # fmt: skip
    windows = np.tile([0.0, 1000.0], (n, 1))
    zoomed = rng.random(n) < 0.35
    values = truth.copy()
    f = features(values, windows, zoomed, "plate")
    l = f[:, FEATURES.index("l")]  # noqa: E741
    r = truth[:, 2] / fold
    k = np.exp(np.where(zoomed, -0.7, -0.3 * l) + 0.8 * r)
    # B0's scatter a fraction of the line's width, as the networks' (0.9-3.6 thousandths
    # of dB over a fitting draw)
    sigmas = np.column_stack([0.004 * truth[:, 1], 0.01 * truth[:, 1], np.full(n, 0.01)])
    noise = rng.standard_normal((n, 3)) * sigmas * k[:, None]
    values += noise
    return values, sigmas, truth, windows, zoomed, k, noise


def test_a_sigma_beyond_the_fitting_draw_is_never_shrunk():
    """A line the network is far less sure of than of any line of the fitting draw keeps
    its own sigma where the calibration would shrink it (the factor here is about 1/10:
    the errors are a tenth of the reported sigmas), and `beyond_range` names it."""
    values, sigmas, truth, windows, zoomed, _, noise = _synthetic(4000)
    values = truth + noise / 10
    cal = fit_calibration(values, sigmas, truth, windows, zoomed, "plate")
    assert len(cal["s_hi"]) == 3
    plain = {**cal, "s_hi": [np.inf] * 3}  # the same table without the guard
    middle = np.argsort(truth[:, 1])[len(truth) // 2 : len(truth) // 2 + 3]  # typical dB
    v, w, z = values[middle], windows[middle], zoomed[middle]
    raw = sigmas[middle].copy()
    raw[0] *= 50.0  # row 0: 50 times the usual sigma, every parameter
    shrunk = apply_calibration(plain, v, raw, w, z)
    assert (shrunk < raw).all()  # the factor alone would shrink all of them
    far = beyond_range(cal, raw, w)
    assert far[0].all() and not far[1:].any()
    out = apply_calibration(cal, v, raw, w, z)
    np.testing.assert_array_equal(out[0], np.maximum(shrunk[0], raw[0]))
    np.testing.assert_array_equal(out[1:], shrunk[1:])
    assert not beyond_range(None, raw, w).any()


def test_a_p_outside_the_networks_answers_keeps_every_sigma_at_least_the_networks_own():
    """A line read with p / p_fold outside R_RANGE (below 0.05: a thin sample's p near 0
    or below; beyond the fold) is unlike every line of the fitting draw: each of its
    sigmas is kept at least the network's own, where the factor would shrink it."""
    from dysonian_pl.calibration import R_RANGE, outside_answers

    values, sigmas, truth, windows, zoomed, _, noise = _synthetic(4000)
    values = truth + noise / 10  # factors about 1/10: the calibration shrinks every sigma
    cal = fit_calibration(values, sigmas, truth, windows, zoomed, "plate")
    fold = p_fold("plate")
    rows = np.argsort(truth[:, 1])[2000:2005]  # typical lines
    v, w, z = values[rows].copy(), windows[rows], zoomed[rows]
    v[:, 2] = np.array([-0.3, 0.5 * R_RANGE[0], 0.5, R_RANGE[1] * 1.01, np.nan]) * fold
    out = outside_answers(v, "plate")
    np.testing.assert_array_equal(out, [True, True, False, True, True])
    raw = sigmas[rows]
    after = apply_calibration(cal, v, raw, w, z)
    assert np.all(after[out] >= raw[out]) and np.all(after[~out] < raw[~out])


def _coverage(err, sigma):
    return (err <= sigma).mean(0), (err <= 2 * sigma).mean(0)


def test_features_from_predictions():
    values = np.array([[500.0, 50.0, 1.0], [120.0, 10.0, 2.0], [990.0, 20.0, 0.5]])
    windows = np.array([[0.0, 1000.0], [0.0, 1000.0], [900.0, 1100.0]])
    f = features(values, windows, np.array([False, False, True]), "plate")
    assert f.shape == (3, SHARED) and SHARED == len(FEATURES) - 3 * len(HATS) - 2
    assert FEATURES[:SHARED] == BIAS_FEATURES[:SHARED]
    assert f[0, FEATURES.index("l")] == pytest.approx(np.log(500 / 50))
    assert f[1, FEATURES.index("l")] == pytest.approx(np.log(120 / 10))
    assert f[0, FEATURES.index("u")] == pytest.approx(np.log(0.05))
    assert f[2, FEATURES.index("l")] == 0.0 and f[2, FEATURES.index("zoomed")] == 1.0
    assert f[1, FEATURES.index("r")] == pytest.approx(2.0 / 2.6544204, rel=1e-6)
    # where the line sits in a zoomed window, in line widths from its centre (row 2:
    # (990 - 1000) / 20); nothing for a whole-sweep reading
    c = [FEATURES.index(n) for n in ("zoomed c", "zoomed c^2", "zoomed |c|", "zoomed c^3")]
    np.testing.assert_allclose(f[2, c], [-0.5, 0.25, 0.5, -0.125])
    assert not f[:2, c].any()


def test_hats_of_p_are_piecewise_linear_and_flat_outside_their_knots():
    """Hats at r = p / p_fold 0.2-1 (the one at 0.1 is the constant's), flat below 0.1,
    where the networks read no simulated line, and beyond the fold."""
    from dysonian_pl.calibration import _hats

    fold = p_fold("plate")
    values = np.zeros((6, 3))
    values[:, 2] = np.array([-0.5, 0.0, 0.1, 0.15, 0.55, 1.0]) * fold
    h = _hats(values, "plate")
    assert h.shape == (6, len(HATS)) == (6, 9)
    assert not h[:3].any()  # r at or below 0.1: the constant's (left out) hat alone
    np.testing.assert_allclose(h[3, 0], 0.5)  # halfway to the knot at 0.2
    np.testing.assert_allclose(h[4, [3, 4]], [0.5, 0.5])  # between 0.5 and 0.6
    np.testing.assert_allclose(h[5], np.eye(9)[8], atol=1e-12)
    beyond = values[5:].copy()
    beyond[:, 2] = 1.7 * fold
    np.testing.assert_array_equal(_hats(beyond, "plate")[0], h[5])  # beyond the fold


def test_fit_and_apply_restore_coverage_where_one_factor_cannot():
    values, sigmas, truth, windows, zoomed, _, _ = _synthetic(40000)
    cal = fit_calibration(values, sigmas, truth, windows, zoomed, "plate")
    assert cal["version"] == 11 and cal["features"] == list(FEATURES)
    assert len(cal["s_centres"]) == 3
    # the learned log-factor of B0 follows the one that made the errors: 0.8 r, so its
    # polynomial in r rises by 0.8 from r = 0 to r = 1
    w = np.asarray(cal["weights"])[0]
    rise = sum(w[FEATURES.index(n)] for n in ("r", "r^2", "r^3"))
    assert rise == pytest.approx(0.8, abs=0.15)
    assert w[FEATURES.index("zoomed")] == pytest.approx(-0.7, abs=0.15)
    # a fresh draw of the same law: coverage near nominal overall and in every slice
    v2, s2, t2, w2, z2, _, _ = _synthetic(40000, seed=1)
    v2 = apply_bias(cal, v2, w2, z2)  # as infer reads: dB corrected first
    after = apply_calibration(cal, v2, s2, w2, z2)
    err = np.abs(v2 - t2)
    r = t2[:, 2] / p_fold("plate")
    for rows in (z2, ~z2 & (r < 0.3), ~z2 & (r > 0.8), np.ones(len(r), bool)):
        c1, c2 = _coverage(err[rows], after[rows])
        assert np.all(np.abs(c1 - ONE_SIGMA) < 0.03), c1
        assert np.all(np.abs(c2 - TWO_SIGMA) < 0.02), c2
    # one overall factor would not: the zoomed spectra are over-covered
    single = np.quantile(err / s2, ONE_SIGMA, axis=0)
    assert (err[z2] <= s2[z2] * single).mean() > 0.75


def test_the_bias_of_db_is_learned_and_removed_within_its_fitted_range():
    """dB read low by 0.5 % plus 1 % times p / p_fold (the networks' kind of bias, larger):
    the fitted correction removes it on a fresh draw, B0 and p are left as they were,
    the correction is bounded by its range over the fitting draw, and the sigmas are
    calibrated on the corrected values."""
    assert sorted(DEBIASED) == [0, 1, 2]
    values, sigmas, truth, windows, zoomed, _, _ = _synthetic(20000)
    law = lambda v, t: 1.0 - 0.005 - 0.01 * t[:, 2] / p_fold("plate")  # noqa: E731
    values[:, 1] = truth[:, 1] * law(values, truth) + (values[:, 1] - truth[:, 1])
    cal = fit_calibration(values, sigmas, truth, windows, zoomed, "plate")
    lo, hi = cal["bias"][1]["clip"]
    assert -0.005 < lo < 0.007 and 0.013 < hi < 0.025  # 1 / law - 1 spans 0.5-1.6 %
    v2, s2, t2, w2, z2, _, _ = _synthetic(20000, seed=1)
    v2[:, 1] = t2[:, 1] * law(v2, t2) + (v2[:, 1] - t2[:, 1])
    fixed = apply_bias(cal, v2, w2, z2)
    # B0 and p had no mean error: their corrections, fitted on noise, make them at most
    # 0.3 % worse (B0's: 55 weights fitted on the noise of 20,000 lines)
    for j in (0, 2):
        assert np.abs(fixed[:, j] - t2[:, j]).mean() < 1.003 * np.abs(v2[:, j] - t2[:, j]).mean()
    rel_before = (v2[:, 1] - t2[:, 1]) / t2[:, 1]
    rel_after = (fixed[:, 1] - t2[:, 1]) / t2[:, 1]
    assert rel_before.mean() < -0.009 and abs(rel_after.mean()) < 0.0015  # 85 % of it gone
    r = t2[:, 2] / p_fold("plate")
    assert abs(rel_after[r > 0.8].mean()) < 0.002  # where the bias was largest (-1.3 %)
    # far outside the fitting draw the correction stops at its range
    odd = v2[:3].copy()
    odd[:, 2] = [50.0, 80.0, 100.0]  # far beyond the fold (r clipped to R_RANGE by `features`)
    corr = apply_bias(cal, odd, w2[:3], z2[:3])[:, 1] / odd[:, 1] - 1.0
    assert np.all((corr >= lo - 1e-12) & (corr <= hi + 1e-12))
    # no table: unchanged; an old table: refused
    np.testing.assert_array_equal(apply_bias(None, v2, w2, z2), v2)
    with pytest.raises(ValueError, match="fit it again"):
        apply_bias({**cal, "version": 6}, v2, w2, z2)
    # the sigmas were calibrated on the corrected values: dB's coverage on them is nominal
    after = apply_calibration(cal, fixed, s2, w2, z2)
    c1, c2 = _coverage(np.abs(fixed - t2), after)
    assert abs(c1[1] - ONE_SIGMA) < 0.03 and abs(c2[1] - TWO_SIGMA) < 0.02, (c1, c2)


def _wave(n: int, seed: int):
    """Zoomed predictions (windows 4 line widths wide, centred on the line) whose B0 is
    off by dB * 0.008 sin(4 pi r), whose p is off by 0.01 sin(4 pi r) and whose p
    errors scale as exp(0.6 sin(4 pi r)),
    r = p / p_fold: laws that rise and fall with p, as the networks' do (theirs about
    as often: over the fitting draw p's ±1σ held 0.76 / 0.55 / 0.73 / 0.58 / 0.74 for
    true p in 0-0.5 / 0.5-1 / 1-1.5 / 1.5-2 / 2-2.7, the cubic in r fitted)."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack(
        [rng.uniform(3300, 3400, n), rng.uniform(10, 20, n), rng.uniform(0.15, 2.6, n)]
    )  # fmt: skip
    r = truth[:, 2] / p_fold("plate")
    centre = truth[:, 0] + 0.1 * truth[:, 1] * rng.standard_normal(n)  # an earlier reading's
    windows = np.column_stack([centre - 2 * truth[:, 1], centre + 2 * truth[:, 1]])
    sigmas = np.column_stack([0.01 * truth[:, 1], 0.01 * truth[:, 1], np.full(n, 0.01)])
    noise = rng.standard_normal((n, 3)) * sigmas
    noise[:, 2] *= np.exp(0.6 * np.sin(4 * np.pi * r))
    values = truth + noise
    values[:, 0] += truth[:, 1] * 0.008 * np.sin(4 * np.pi * r)
    values[:, 2] += 0.01 * np.sin(4 * np.pi * r)
    return values, sigmas, truth, windows, np.ones(n, bool), r


def test_laws_that_rise_and_fall_with_p_are_learned(monkeypatch):
    """B0's and p's mean errors and p's error scale follow a sine of p / p_fold, two
    periods over the range: the hats of r remove the first two and calibrate the third
    in every tenth of r from 0.1 to 0.9 (p's mean error between 0.2 and 0.8 p_fold),
    where the cubic in r alone does not; p is left as it was read near the ends of the
    trained range."""
    import dysonian_pl.calibration as C

    cal = fit_calibration(*_wave(20000, 0)[:5], "plate")
    v, s, t, w, z, r = _wave(20000, 1)
    fixed = apply_bias(cal, v, w, z)
    bins = [(r >= a) & (r < a + 0.1) for a in np.arange(0, 0.95, 0.1)]
    before = [np.mean(v[rows, 0] - t[rows, 0]) / 15.0 for rows in bins]  # dB: 10-20
    after = [np.mean(fixed[rows, 0] - t[rows, 0]) / 15.0 for rows in bins]
    assert max(np.abs(before)) > 0.006 and max(np.abs(after)) < 0.001, (before, after)
    before = [np.mean(v[rows, 2] - t[rows, 2]) for rows in bins[2:8]]  # p: scatter 0.01
    after = [np.mean(fixed[rows, 2] - t[rows, 2]) for rows in bins[2:8]]
    assert max(np.abs(before)) > 0.007 and max(np.abs(after)) < 0.002, (before, after)
    # near the ends of the trained range (below 0.1 and above 0.9 p_fold) p is left as it
    # was read, and between them it is corrected
    odd = v[:6].copy()
    odd[:, 2] = np.array([-0.2, 0.0, 0.05, 0.95, 1.2, 0.5]) * p_fold("plate")
    p_fixed = apply_bias(cal, odd, w[:6], z[:6])[:, 2]
    np.testing.assert_array_equal(p_fixed[:5], odd[:5, 2])
    assert abs(p_fixed[5] - odd[5, 2]) > 1e-4
    after = apply_calibration(cal, fixed, s, w, z)
    err = np.abs(fixed - t)
    for rows in bins[1:9]:  # (2,000 each: binomial standard errors 0.010 and 0.005)
        c1, c2 = _coverage(err[rows], after[rows])
        assert abs(c1[2] - ONE_SIGMA) < 0.05 and abs(c2[2] - TWO_SIGMA) < 0.025, (c1, c2)
    # the same fit with p's factor a cubic in r (no hats): some tenth falls outside
    monkeypatch.setattr(C, "HATTED", ())
    cubic = fit_calibration(*_wave(20000, 0)[:5], "plate")
    assert not np.any(np.asarray(cubic["weights"])[2, SHARED : SHARED + len(HATS)])
    after = apply_calibration(cubic, apply_bias(cubic, v, w, z), s, w, z)
    worst = max(abs(_coverage(err[rows], after[rows])[0][2] - ONE_SIGMA) for rows in bins[1:9])
    assert worst > 0.1


def _wide_wave(n: int, seed: int):
    """Whole-sweep readings whose p errors scale as exp(0.8 w sin(2 pi r)), w from 0 for
    a line 1 % of its window wide to 1 at 25 %: how p's error follows p changes with the
    line's width in its window (as the networks' does: over a fitting draw, p's ±1σ held
    0.53-0.61 for lines 15-26 % of the window wide at p / p_fold 0.4-0.8, against
    0.68-0.69 for narrow ones)."""
    rng = np.random.default_rng(seed)
    width = rng.uniform(0.01, 0.25, n)
    truth = np.column_stack(
        [rng.uniform(450, 550, n), 1000 * width, rng.uniform(0.15, 2.6, n)]
    )  # fmt: skip
    r = truth[:, 2] / p_fold("plate")
    windows = np.tile([0.0, 1000.0], (n, 1))
    sigmas = np.column_stack([0.01 * truth[:, 1], 0.01 * truth[:, 1], np.full(n, 0.01)])
    noise = rng.standard_normal((n, 3)) * sigmas
    wide = (width - 0.01) / 0.24
    noise[:, 2] *= np.exp(0.8 * wide * np.sin(2 * np.pi * r))
    return truth + noise, sigmas, truth, windows, np.zeros(n, bool), r, wide


def test_how_p_s_sigma_follows_p_may_change_with_the_line_s_width(monkeypatch):
    """Version 10: p's factor has the hats of r times u and u^2 (u = log(dB / window));
    with the hats of r alone (version 9), wide lines at p / p_fold 0.2-0.4 are covered
    too little (±1σ 0.58-0.61) and at 0.6-0.8 too much (0.76-0.77)."""
    import dysonian_pl.calibration as C

    fit = _wide_wave(30000, 0)[:5]
    v, s, t, w, z, r, wide = _wide_wave(30000, 1)
    bins = [(r >= a) & (r < a + 0.1) & (wide > 0.7) for a in np.arange(0.1, 0.9, 0.1)]

    def worst(cal):  # the largest distance of p's ±1σ coverage from nominal in a bin
        after = apply_calibration(cal, apply_bias(cal, v, w, z), s, w, z)
        err = np.abs(apply_bias(cal, v, w, z) - t)
        return max(abs(_coverage(err[rows], after[rows])[0][2] - ONE_SIGMA) for rows in bins)

    cal = fit_calibration(*fit, "plate")
    assert worst(cal) < 0.05
    # p's factor has no polynomial in r beside its hats: flat below their first knot
    # (r = 0.1), where a cubic fitted beside them had jumped 29 times by r = 0.05
    assert not any(cal["weights"][2][FEATURES.index(n)] for n in C.POLY_R)
    line = np.array([[500.0, 50.0, 0.1 * p_fold("plate")], [500.0, 50.0, 0.05 * p_fold("plate")]])
    two = apply_calibration(
        cal, line, np.full((2, 3), 0.05), np.tile([0.0, 1000.0], (2, 1)), [False] * 2
    )
    assert two[0, 2] == pytest.approx(two[1, 2], rel=1e-12)
    wide_cols = [FEATURES.index(n) for n in C.WIDE_HATS]
    real = C._sigma_columns

    def without(j: int) -> np.ndarray:
        used = real(j)
        used[wide_cols] = False
        return used

    monkeypatch.setattr(C, "_sigma_columns", without)
    assert worst(fit_calibration(*fit, "plate")) > 0.08


def _offset_wave(n: int, seed: int):
    """Zoomed B0 readings off by dB * 0.01 c sin(4 pi r): a mean error that follows p
    one way for a line read right of its window's centre (c > 0, in line widths) and
    the other way left of it, 0 on the centre."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack(
        [rng.uniform(3300, 3400, n), rng.uniform(10, 20, n), rng.uniform(0.15, 2.6, n)]
    )  # fmt: skip
    r = truth[:, 2] / p_fold("plate")
    c = np.clip(0.5 * rng.standard_normal(n), -2.5, 2.5)
    centre = truth[:, 0] - c * truth[:, 1]
    windows = np.column_stack([centre - 2 * truth[:, 1], centre + 2 * truth[:, 1]])
    sigmas = np.column_stack([0.002 * truth[:, 1], 0.01 * truth[:, 1], np.full(n, 0.01)])
    values = truth + rng.standard_normal((n, 3)) * sigmas
    values[:, 0] += truth[:, 1] * 0.01 * c * np.sin(4 * np.pi * r)
    return values, sigmas, truth, windows, np.ones(n, bool), r, c


def test_a_mean_error_of_b0_that_follows_p_with_the_offset_is_learned(monkeypatch):
    """Version 9: B0's correction has the hats of r times c (the zoomed reading's offset
    from its window's centre); without them (version 8's features) a mean error whose
    sign follows c is left as it was, since the hats of r alone average it to 0."""
    import dysonian_pl.calibration as C

    fit = _offset_wave(20000, 0)[:5]
    v, s, t, w, z, r, c = _offset_wave(20000, 1)
    bins = [
        (r >= a) & (r < a + 0.1) & (np.sign(c) == side)
        for a in np.arange(0.1, 0.9, 0.1)
        for side in (-1, 1)
    ]

    def worst(cal):  # the largest mean error of B0 in a bin, in units of dB (15 on average)
        fixed = apply_bias(cal, v, w, z)
        return max(abs(np.mean(fixed[rows, 0] - t[rows, 0])) / 15.0 for rows in bins)

    assert worst(None) > 0.002
    assert worst(fit_calibration(*fit, "plate")) < 0.0008
    offset = tuple(n for n in BIAS_FEATURES if n.startswith("zoomed c hat"))
    assert len(offset) == len(HATS)
    monkeypatch.setitem(C.DEBIASED, 0, tuple(n for n in BIAS_FEATURES if n not in offset))
    assert worst(fit_calibration(*fit, "plate")) > 0.002


def _zoomed_b0(n: int, seed: int, width=(10.0, 20.0)):
    """Zoomed readings (windows 4 line widths wide, centred 0.02 line widths off the line,
    as a reading before put it) with B0's scatter 0.002 dB, dB uniform in `width`."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack(
        [rng.uniform(3300, 3400, n), rng.uniform(*width, n), rng.uniform(0.15, 2.6, n)]
    )  # fmt: skip
    centre = truth[:, 0] + 0.02 * truth[:, 1] * rng.standard_normal(n)
    windows = np.column_stack([centre - 2 * truth[:, 1], centre + 2 * truth[:, 1]])
    sigmas = np.column_stack([0.002 * truth[:, 1], 0.01 * truth[:, 1], np.full(n, 0.01)])
    values = truth + rng.standard_normal((n, 3)) * sigmas
    return values, sigmas, truth, windows, np.ones(n, bool), truth[:, 2] / p_fold("plate")


def _fast(n: int, seed: int):
    """B0 read zoomed off by dB * 0.005 sin(10 pi r): five periods over r = p / p_fold
    0-1, zero at every tenth of r, where the hats of `P_KNOTS` have their knots."""
    v, s, t, w, z, r = _zoomed_b0(n, seed)
    v[:, 0] += t[:, 1] * 0.005 * np.sin(10 * np.pi * r)
    return v, s, t, w, z, r


def test_a_mean_error_of_zoomed_b0_that_swings_with_p_faster_than_tenths_is_learned(
    monkeypatch,
):
    """Version 11: B0's correction of a zoomed reading has hats of r every 1/30
    (`ZOOMED_KNOTS`); with the tenths (version 10's zoomed hats) a mean error that swings
    between them is left as it was."""
    import dysonian_pl.calibration as C

    fit = _fast(20000, 0)[:5]
    v, s, t, w, z, r = _fast(20000, 1)
    bins = [(r >= a) & (r < a + 0.05) for a in np.arange(0.1, 0.95, 0.05)]  # quarter periods

    def worst(cal):  # the largest mean error of B0 in a bin, in units of dB (15 on average)
        fixed = apply_bias(cal, v, w, z)
        return max(abs(np.mean(fixed[rows, 0] - t[rows, 0])) / 15.0 for rows in bins)

    assert worst(None) > 0.003
    assert worst(fit_calibration(*fit, "plate")) < 0.0008
    assert len(C.ZOOMED_HATS) == 27 and C.ZOOMED_KNOTS[-1] == 1.0
    coarse = (
        C.SHARED_NAMES + HATS + tuple(f"zoomed {h}" for h in HATS) + BIAS_FEATURES[-len(HATS) :]
    )
    monkeypatch.setattr(C, "ZOOMED_KNOTS", C.P_KNOTS)
    monkeypatch.setattr(C, "BIAS_FEATURES", coarse)
    monkeypatch.setitem(C.DEBIASED, 0, coarse)
    assert worst(fit_calibration(*fit, "plate")) > 0.003


def test_b0_s_correction_is_fitted_in_line_widths_every_line_counted_alike(monkeypatch):
    """Version 11: zoomed readings of narrow lines (80 %, 10-20 G) off by +0.005 dB and of
    wide ones (20 %, 300-500 G) not off, nothing in the features to tell them apart: the
    correction fitted in line widths takes 0.004 dB off both, so the mean error over the
    lines is 0.0016 dB; fitted in gauss, as before, the wide lines outweigh the narrow
    ones by their width squared and the narrow ones are left 0.005 dB off."""
    import dysonian_pl.calibration as C

    def draw(seed):
        narrow = _zoomed_b0(16000, seed)
        wide = _zoomed_b0(4000, seed + 100, width=(300.0, 500.0))
        out = [np.concatenate([a, b]) for a, b in zip(narrow[:5], wide[:5], strict=True)]
        out[0][:16000, 0] += 0.005 * out[2][:16000, 1]
        return out, np.arange(20000) < 16000

    fit, _ = draw(0)
    (v, s, t, w, z), narrow = draw(1)

    def off(cal):  # mean error of B0 in line widths: narrow lines, wide ones, all lines
        e = (apply_bias(cal, v, w, z)[:, 0] - t[:, 0]) / t[:, 1]
        return (
            e[narrow].mean(),
            e[~narrow].mean(),
            0.8 * abs(e[narrow].mean()) + 0.2 * abs(e[~narrow].mean()),
        )

    n, wd, both = off(fit_calibration(*fit, "plate"))
    assert n == pytest.approx(0.001, abs=3e-4) and wd == pytest.approx(-0.004, abs=3e-4)
    assert both < 0.002
    monkeypatch.setattr(C, "FIT_IN_LINE_WIDTHS", ())
    n, wd, both = off(fit_calibration(*fit, "plate"))
    assert n > 0.0045 and abs(wd) < 3e-4 and both > 0.0035


def test_b0_s_factor_follows_its_mean_absolute_error_where_its_errors_have_tails(monkeypatch):
    """Version 11: B0's factor maximises a Laplace likelihood. Zoomed readings whose errors
    are a mixture (90 % the sigma's scatter, 10 % three times it: lines whose mean error
    the correction did not follow) beside whole-sweep readings with Gaussian errors: the
    Gaussian fit matches the mixture's variance and covers 74 % of its errors inside
    ±1σ; the Laplace fit puts both of its coverages inside the bands (0.71, 0.94)."""
    import dysonian_pl.calibration as C

    def draw(seed):
        rng = np.random.default_rng(seed)
        n = 40000
        truth = np.column_stack(
            [rng.uniform(300, 700, n), rng.uniform(10, 20, n), rng.uniform(0.5, 2.0, n)]
        )  # fmt: skip
        zoomed = rng.random(n) < 0.5
        # a zoomed window centred where a reading before put the line
        centre = np.where(zoomed, truth[:, 0] + 0.1 * truth[:, 1] * rng.standard_normal(n), 500)
        half = np.where(zoomed, 2 * truth[:, 1], 500.0)
        windows = np.column_stack([centre - half, centre + half])
        sigmas = np.column_stack([0.002 * truth[:, 1], 0.01 * truth[:, 1], np.full(n, 0.01)])
        scale = np.where(zoomed & (rng.random(n) < 0.1), 3.0, 1.0)
        values = truth + rng.standard_normal((n, 3)) * sigmas * scale[:, None]
        return values, sigmas, truth, windows, zoomed

    fit = draw(0)
    v, s, t, w, z = draw(1)

    def cover(cal):  # B0's ±1σ and ±2σ coverage of the zoomed readings
        fixed = apply_bias(cal, v, w, z)
        c1, c2 = _coverage(np.abs(fixed - t)[z], apply_calibration(cal, fixed, s, w, z)[z])
        return c1[0], c2[0]

    c1, c2 = cover(fit_calibration(*fit, "plate"))
    assert 0.66 < c1 < 0.72 and 0.93 < c2 < 0.965, (c1, c2)
    monkeypatch.setattr(C, "LAPLACE_FIT", ())
    c1, _ = cover(fit_calibration(*fit, "plate"))
    assert c1 > 0.733, c1  # outside the band (0.63-0.73)


def test_a_zoomed_window_cut_by_the_end_of_the_sweep_gets_its_own_factor():
    """Zoomed readings whose window an end of the sweep cut (the line off its centre)
    are read three times worse than centred ones: the c features give each its factor,
    so the centred ones, most of them, are not left with sigmas too wide."""
    rng = np.random.default_rng(3)
    n = 20000
    truth = np.column_stack(
        [rng.uniform(3300, 3400, n), rng.uniform(10, 20, n), rng.uniform(0.5, 2.0, n)]
    )  # fmt: skip
    cut = rng.random(n) < 0.2
    shift = np.where(cut, rng.uniform(0.8, 1.6, n), 0.0) * truth[:, 1]  # line off centre
    centre = truth[:, 0] + shift + 0.1 * truth[:, 1] * rng.standard_normal(n)
    windows = np.column_stack([centre - 2 * truth[:, 1], centre + 2 * truth[:, 1]])
    sigmas = np.column_stack([0.01 * truth[:, 1], 0.01 * truth[:, 1], np.full(n, 0.01)])
    values = truth + rng.standard_normal((n, 3)) * sigmas * np.where(cut, 3.0, 1.0)[:, None]
    zoomed = np.ones(n, bool)
    half = n // 2
    cal = fit_calibration(
        values[:half], sigmas[:half], truth[:half], windows[:half], zoomed[:half], "plate"
    )
    v = apply_bias(cal, values[half:], windows[half:], zoomed[half:])
    after = apply_calibration(cal, v, sigmas[half:], windows[half:], zoomed[half:])
    err = np.abs(v - truth[half:])
    for rows in (cut[half:], ~cut[half:]):
        c1, c2 = _coverage(err[rows], after[rows])
        assert np.all(np.abs(c1 - ONE_SIGMA) < 0.03) and np.all(np.abs(c2 - TWO_SIGMA) < 0.02)


def test_each_parameter_is_calibrated_on_the_window_it_was_read_on():
    """Windows (N, 3, 2) and zoom flags (N, 3), one per parameter (infer.read_zoomed):
    parameter j's factor uses its own window and flag, exactly as if every parameter had
    been read on that window; fitting on them learns each parameter's own law."""
    values, sigmas, truth, windows, zoomed, _, _ = _synthetic(6000)
    cal = fit_calibration(values, sigmas, truth, windows, zoomed, "plate")
    rng = np.random.default_rng(2)
    per_w = np.stack([windows, windows * 0.5 + 200.0, windows], axis=1)  # (N, 3, 2)
    per_z = np.column_stack([zoomed, rng.random(len(zoomed)) < 0.5, ~zoomed])
    out = apply_calibration(cal, values, sigmas, per_w, per_z)
    for j in range(3):
        alone = apply_calibration(cal, values, sigmas, per_w[:, j], per_z[:, j])
        np.testing.assert_allclose(out[:, j], alone[:, j], rtol=1e-12)
    # B0 zoomed by its own flag, dB and p by the opposite one: each learns its own sign
    flip = np.column_stack([zoomed, ~zoomed, ~zoomed])
    cal2 = fit_calibration(values, sigmas, truth, np.stack([windows] * 3, axis=1), flip, "plate")
    w = np.asarray(cal2["weights"])
    assert w[0, FEATURES.index("zoomed")] == pytest.approx(-0.7, abs=0.15)
    assert w[1, FEATURES.index("zoomed")] > 0.3  # dB's zoomed flag marks the whole-sweep rows


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_constant_puts_both_coverages_inside_the_bands(beta):
    """Gaussian errors (generalised normal, shape 2) get about the Gaussian factor;
    lighter-tailed errors (shape 3: ±2σ holds 97.7 % where ±1σ holds 67 %) get a factor
    that puts both coverages inside the bands, which the least-squares compromise with
    68.3 % and 95.4 % did not (0.674 / 0.977)."""
    from scipy.stats import gennorm

    from dysonian_pl.calibration import BANDS, _closest_factor

    z = np.abs(gennorm.rvs(beta, size=200_000, random_state=np.random.default_rng(0)))
    f = _closest_factor(z)
    c1, c2 = (z <= f).mean(), (z <= 2 * f).mean()
    (lo1, hi1), (lo2, hi2) = BANDS
    assert lo1 + 0.005 < c1 < hi1 and lo2 < c2 < hi2 - 0.003, (c1, c2)
    if beta == 2.0:  # a Gaussian: near the nominal fractions
        assert abs(c1 - ONE_SIGMA) < 0.015 and abs(c2 - TWO_SIGMA) < 0.006, (c1, c2)
    else:
        q = np.quantile(z, ONE_SIGMA)
        assert (z <= 2 * q).mean() > hi2  # the factor of 68.3 % would over-cover ±2σ


def test_apply_without_calibration_is_identity_and_bad_input_is_refused():
    s = np.ones((3, 3))
    w = np.tile([0.0, 1000.0], (3, 1))
    z = np.zeros(3, bool)
    out = apply_calibration(None, s, s, w, z)
    assert out is not s and np.array_equal(out, s)
    with pytest.raises(ValueError, match="version"):
        apply_calibration({"version": 3, "features": list(FEATURES)}, s, s, w, z)
    with pytest.raises(ValueError, match="fit it again with python -m dysonian_pl calibrate"):
        apply_calibration({"version": 5, "features": list(FEATURES)}, s, s, w, z)
    big = np.ones((100, 3))
    with pytest.raises(ValueError, match="finite and > 0"):
        fit_calibration(
            big, np.zeros((100, 3)), big, np.tile([0.0, 1.0], (100, 1)), big[:, 0] > 0, "plate"
        )
    with pytest.raises(ValueError, match="one shape"):
        fit_calibration(s, s, np.ones((2, 3)), w, z, "plate")
    with pytest.raises(ValueError, match=f"at least {10 * len(FEATURES)}"):
        fit_calibration(s, s, s, w, z, "plate")


def test_calibrate_command_writes_a_checkpoint_infer_uses(tmp_path, capsys):
    import torch

    from dysonian_pl import infer
    from dysonian_pl.calibration import main
    from dysonian_pl.params import PRESETS
    from dysonian_pl.simulate import field_axis, simulate

    src = infer.default_checkpoint("plate")
    out = tmp_path / "cal.ckpt"
    assert main(["--ckpt", src, "--out", str(out), "--n", "1000", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| after |" in printed and "| before |" in printed
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    cal = ckpt["dysonian_pl"]["sigma_calibration"]
    assert cal["kind"] == "log-linear" and cal["fitted_on"] == {
        "n": 1000, "seed": 3, "zoomed_fraction": [pytest.approx(z, abs=0.06) for z in (0.72, 0.35, 0.35)]
    }  # fmt: skip
    assert np.asarray(cal["weights"]).shape == (3, len(FEATURES))
    # the new checkpoint's dB is the raw one corrected (apply_bias), B0 and p unchanged;
    # its sigmas are the raw ones times exp(w . f) of the corrected values
    model, shipped = infer.load_model(out), infer.load_model(src)
    cfg = PRESETS["set-4"]
    x = simulate(cfg.replace(n_points=model.sim.n_points), 0, 10**9 + np.arange(32))[0].numpy()
    axis = field_axis(cfg.replace(n_points=model.sim.n_points))
    v1, s1, w1 = infer.predict_zoomed(model, axis, x)
    v0, s0, w0 = infer.predict_zoomed(shipped, axis, x, calibrated=False)
    assert 0 < np.abs((v1[:, 0] - v0[:, 0]) / v0[:, 1]).max() < 0.05  # B0: by < 0.05 dB
    assert 0 < np.abs(v1[:, 2] - v0[:, 2]).max() < 0.15  # p: by < 0.15
    zoomed = w1[..., 1] - w1[..., 0] < 0.999 * (axis[-1] - axis[0])  # (N, 3)
    np.testing.assert_allclose(v1, apply_bias(cal, v0, w1, zoomed), rtol=1e-12)
    assert 0 < np.abs(v1[:, 1] / v0[:, 1] - 1).max() < 0.05
    np.testing.assert_allclose(s1, apply_calibration(cal, v1, s0, w1, zoomed), rtol=1e-12)
    assert not np.allclose(s1, s0)
    # too few spectra: a clear error, nothing written
    assert main(["--ckpt", src, "--out", str(tmp_path / "x.ckpt"), "--n", "10"]) == 2
    assert "--n: at least 1000" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()


def test_calibrate_draws_widths_log_uniformly_whatever_the_training_weighting(monkeypatch):
    """A model trained with fewer narrow lines (sim.dB_narrow) is calibrated on the lines
    users bring, log-uniform over the whole range: its table must hold for narrow lines."""
    from types import SimpleNamespace

    import dysonian_pl.simulate as simulate_module
    from dysonian_pl.calibration import calibrate_model
    from dysonian_pl.params import PRESETS

    class Drawn(Exception):
        pass

    drawn = []

    def spy(cfg, seed, index):
        drawn.append((cfg, seed, int(index[0]), len(index)))
        raise Drawn

    monkeypatch.setattr(simulate_module, "simulate", spy)
    plain = PRESETS["universal-plate"]
    for sim in (plain.replace(dB_narrow=(40.0, 0.1)), plain):
        with pytest.raises(Drawn):
            calibrate_model(SimpleNamespace(sim=sim, uncertainty=True), 1000, 5)
    assert drawn == [(plain, 5, 2 * 10**9, 1000)] * 2


def test_the_sigma_feature_corrects_sigmas_that_spread_too_little():
    """Errors that grow as sigma^2 (a network whose sigmas are right on average but too
    alike between easy and hard lines): the s feature learns the power."""
    rng = np.random.default_rng(5)
    n = 40000
    truth = np.column_stack(
        [rng.uniform(100, 900, n), np.full(n, 50.0), rng.uniform(0.5, 1.0, n)]
    )  # fmt: skip
    windows = np.tile([0.0, 1000.0], (n, 1))
    zoomed = np.zeros(n, bool)
    sigmas = np.exp(rng.uniform(np.log(0.5), np.log(5.0), (n, 3))) * [1.0, 1.0, 0.001]
    scale = sigmas**2 / np.exp(np.mean(np.log(sigmas**2), axis=0))  # sigma^2, unit mean
    scale[:, 2] *= 0.01  # p's errors (up to 0.1) keep p among the networks' answers
    values = truth + rng.standard_normal((n, 3)) * scale
    cal = fit_calibration(values, sigmas, truth, windows, zoomed, "plate")
    w = np.asarray(cal["weights"])
    # log factor = log(true scale) - log(sigma) = log sigma + const: weight 1 on s
    assert w[0, FEATURES.index("s")] == pytest.approx(1.0, abs=0.05)
    v2 = apply_bias(cal, truth + rng.standard_normal((n, 3)) * scale, windows, zoomed)
    after = apply_calibration(cal, v2, sigmas, windows, zoomed)
    err = np.abs(v2 - truth)
    small, large = sigmas[:, 0] < 1.0, sigmas[:, 0] > 3.0
    for rows in (small, large):  # inside the ±1σ band (0.63-0.73) at both ends
        c1, _ = _coverage(err[rows], after[rows])
        assert np.all(np.abs(c1 - 0.68) < 0.04), c1
