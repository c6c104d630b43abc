"""The sigma calibration table of window-agnostic models (dysonian_pl.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from dysonian_pl.calibration import MIN_PER_CELL, P_EDGES, apply_table, cell_index, fit_table
from dysonian_pl.lineshapes import p_fold


def _synthetic(n: int, seed: int = 0):
    """Predictions whose true error scale is k times the reported sigma, with k set by
    zoom state and p / p_fold: the table must learn k per cell."""
    rng = np.random.default_rng(seed)
    fold = p_fold("plate")
    truth = np.column_stack(
        [rng.uniform(100, 900, n), rng.uniform(10, 500, n), rng.uniform(0.05, 2.65, n)]
    )
    zoomed = rng.random(n) < 0.4
    sigmas = np.column_stack([np.full(n, 2.0), np.full(n, 1.0), np.full(n, 0.05)])
    # error scale: x2 when zoomed is *not* set, and x(1 + 3 ratio) in p
    k = np.where(zoomed, 0.5, 1.0)[:, None] * (1 + 3 * (truth[:, 2:3] / fold))
    values = truth + rng.standard_normal((n, 3)) * sigmas * k
    values[:, 2] = truth[:, 2]  # keep p exact so every cell is the cell of the truth
    values[:, 2] += 1e-9
    return values, sigmas, truth, zoomed, k


def test_cells_by_zoom_and_p_over_fold():
    fold = p_fold("plate")
    p = np.array([0.1, 0.31, 0.6, 0.7, 0.85, 0.95, 1.2]) * fold
    assert cell_index(p, np.zeros(7, bool), "plate").tolist() == [0, 1, 2, 3, 4, 5, 5]
    n_bins = len(P_EDGES) - 1
    assert cell_index(p, np.ones(7, bool), "plate").tolist() == [
        n_bins + i for i in (0, 1, 2, 3, 4, 5, 5)
    ]


def test_fit_and_apply_restore_coverage_per_cell():
    values, sigmas, truth, zoomed, k = _synthetic(60000)
    table = fit_table(values, sigmas, truth, zoomed, "plate")
    assert table["version"] == 1 and len(table["factors"]) == 2 * (len(P_EDGES) - 1)
    assert sum(table["counts"]) == 60000
    # fresh draw, same law: coverage near nominal in every cell and overall
    v2, s2, t2, z2, _ = _synthetic(60000, seed=1)
    after = apply_table(table, v2, s2, z2)
    err = np.abs(v2 - t2)[:, :2]
    cells = cell_index(v2[:, 2], z2, "plate")
    for c in np.unique(cells):
        inside = cells == c
        cover1 = (err[inside] <= after[inside, :2]).mean(0)
        cover2 = (err[inside] <= 2 * after[inside, :2]).mean(0)
        assert np.all(np.abs(cover1 - 0.683) < 0.04), (c, cover1)
        assert np.all(np.abs(cover2 - 0.954) < 0.03), (c, cover2)
    # a single overall factor would not: the zoomed thin-sample cell is over-covered
    single = np.quantile(err / s2[:, :2], 0.6827, axis=0)
    first = cells == len(P_EDGES) - 1
    assert (err[first] <= s2[first, :2] * single).mean() > 0.9
    # the factors are the error scales of each cell (k at the cell's mid p)
    assert table["factors"][0][0] == pytest.approx(1 + 3 * 0.15, rel=0.1)
    n_bins = len(P_EDGES) - 1
    assert table["factors"][n_bins][0] == pytest.approx(0.5 * (1 + 3 * 0.15), rel=0.1)


def test_sparse_cells_take_the_overall_factor_of_their_zoom_state():
    values, sigmas, truth, zoomed, _ = _synthetic(20000)
    # cells hold about 2,000 spectra, the zoom states 8,000 and 12,000
    table = fit_table(values, sigmas, truth, zoomed, "plate", min_per_cell=5000)
    n_bins = len(P_EDGES) - 1
    assert all(f == table["factors"][0] for f in table["factors"][:n_bins])
    assert all(f == table["factors"][n_bins] for f in table["factors"][n_bins:])
    assert table["factors"][0][0] > 1.5 * table["factors"][n_bins][0]
    assert MIN_PER_CELL >= 100


def test_apply_without_table_is_identity_and_bad_input_is_refused():
    s = np.ones((3, 3))
    assert apply_table(None, s, s, np.zeros(3, bool)) is not s
    assert np.array_equal(apply_table(None, s, s, np.zeros(3, bool)), s)
    with pytest.raises(ValueError, match="table version"):
        apply_table({"version": 99}, s, s, np.zeros(3, bool))
    with pytest.raises(ValueError, match="finite and > 0"):
        fit_table(s, np.zeros((3, 3)), s, np.zeros(3, bool), "plate")
    with pytest.raises(ValueError, match="one shape"):
        fit_table(s, s, np.ones((2, 3)), np.zeros(3, bool), "plate")
