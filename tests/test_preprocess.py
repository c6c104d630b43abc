"""Resampling of real spectra onto the model's axis (`preprocess.cubic_resample`)."""

from __future__ import annotations

import numpy as np
import pytest

from dysonian_pl.lineshapes import dysonian
from dysonian_pl.preprocess import cubic_resample, normalise, prepare_real


def test_cubic_resample_is_exact_on_parabolas_on_any_spacing():
    x = np.sort(np.random.default_rng(0).uniform(0.0, 3.0, 40))
    x[0], x[-1] = 0.0, 3.0
    axis = np.linspace(0.0, 3.0, 1001)
    f = lambda t: 2.0 * t**2 - t + 1.0  # noqa: E731
    assert np.abs(cubic_resample(axis, x, f(x)) - f(axis)).max() < 1e-11
    # linear interpolation is not: the test can tell them apart
    assert np.abs(np.interp(axis, x, f(x)) - f(axis)).max() > 1e-3


def test_cubic_resample_third_order_on_a_smooth_function():
    axis = np.linspace(0.0, 3.0, 2001)
    errors = []
    for n in (31, 61, 121):
        x = np.linspace(0.0, 3.0, n)
        errors.append(np.abs(cubic_resample(axis, x, np.sin(3 * x)) - np.sin(3 * axis)).max())
    # halving the step cuts the error about 8 times (third order), not 4 (linear)
    assert errors[0] / errors[1] > 6.5 and errors[1] / errors[2] > 6.5
    assert errors[2] < 4e-5


def test_cubic_resample_clamps_outside_and_averages_repeated_fields():
    x = np.array([0.0, 1.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 1.0, 3.0, 4.0, 9.0])
    out = cubic_resample(np.array([-1.0, 1.0, 4.0]), x, y)
    assert out[0] == 0.0 and out[2] == 9.0
    assert out[1] == pytest.approx(2.0)  # the two points at 1.0, averaged
    assert np.isfinite(cubic_resample(np.linspace(0, 3, 50), x, y)).all()
    # two points: a straight line
    np.testing.assert_allclose(cubic_resample(np.array([0.25]), x[:2], y[:2]), [0.25])


@pytest.mark.parametrize("p", [0.3, 1.0, 2.0])
def test_prepare_real_keeps_the_extrema_of_a_line_few_points_wide(p):
    """A line 8 recorded points across its width, prepared on 4096 points: the cubic
    keeps its shape within 0.3 % of its peak-to-peak (0.1 %); linear interpolation was 0.6-1.1 %
    off (the extrema cut, which the network read as a wider line)."""
    B0, dB = 3400.0, 1.0
    field = np.linspace(3390.0, 3410.0, 161)  # 8 points per dB
    axis = np.linspace(3390.0, 3410.0, 4096)
    prep = prepare_real(field, dysonian(field, B0 + 0.037, dB, p), axis)
    line = dysonian(field, B0 + 0.037, dB, p)
    exact = dysonian(axis, B0 + 0.037, dB, p) - np.median(line)  # the median prepare_real removes
    exact = normalise(exact[None].astype(np.float32))[0]
    linear = normalise(np.interp(axis, field, line - np.median(line))[None].astype(np.float32))[0]
    err = np.abs(prep.spectrum - exact).max()  # of a peak-to-peak of 1
    err_linear = np.abs(linear - exact).max()
    assert err < 3e-3 and err_linear > 3 * err
