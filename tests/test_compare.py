"""Tests for dysonian_pl.compare: method comparison on held-out simulated spectra."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dysonian_pl.compare import (
    HELD_OUT_START,
    compare_methods,
    held_out_indices,
    main,
    markdown,
)
from dysonian_pl.params import PRESETS
from dysonian_pl.simulate import draw_targets

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_spectra"
SIM = PRESETS["set-4"]
KEYS = {"mae", "failure_rate", "failures", "median_ms", "mean_ms"}


def test_held_out_indices_far_from_training():
    idx = held_out_indices(5)
    assert idx[0] == HELD_OUT_START == 10**9 and np.all(np.diff(idx) == 1)


def test_compare_without_predictor():
    res = compare_methods(SIM, 20, 0, None, None, None)
    assert set(res["methods"]) == {"lsq-naive", "lsq-data"}
    for m in res["methods"].values():
        assert KEYS <= set(m) and set(m["mae"]) == {"B0", "dB", "p"}
        assert 0.0 <= m["failure_rate"] <= 1.0 and m["median_ms"] > 0
    # the data start is the better least-squares start (measured 0.05 vs 0.45 at seed 0)
    assert res["methods"]["lsq-data"]["failure_rate"] <= 0.1
    assert res["methods"]["lsq-naive"]["failure_rate"] > res["methods"]["lsq-data"]["failure_rate"]
    assert res["condition"]["snr_db"] == list(SIM.augment.snr_db)
    text = markdown(res, "default")
    assert "| lsq-data |" in text and "failure rate" in text


def test_compare_with_truth_predictor_hybrid_never_fails():
    n, seed = 12, 3
    truth = draw_targets(SIM, seed, held_out_indices(n))
    rng = np.random.default_rng(0)
    calls = []

    def predictor(x: np.ndarray) -> np.ndarray:
        calls.append((x.dtype, x.shape))
        noise = rng.normal(size=truth.shape) * np.array([0.3, 0.02 * truth[:, 1].mean(), 0.02])
        return truth + noise

    res = compare_methods(SIM, n, seed, predictor, (30.0, 30.0), 0.0)
    assert calls == [(np.float32, (n, SIM.n_points))]
    assert set(res["methods"]) == {"cnn", "lsq-naive", "lsq-data", "hybrid"}
    assert res["methods"]["hybrid"]["failure_rate"] == 0.0
    assert res["methods"]["cnn"]["mae"]["B0"] < 0.5
    assert res["methods"]["hybrid"]["median_ms"] >= res["methods"]["cnn"]["median_ms"]
    assert res["condition"] == {"snr_db": [30.0, 30.0], "baseline_curvature": 0.0}


def test_compare_rejects_bad_predictor_shape():
    with pytest.raises(ValueError, match="predictor returned shape"):
        compare_methods(SIM, 3, 0, lambda x: np.zeros((len(x), 2)), None, None)


def test_compare_main_small(tmp_path, monkeypatch, capsys):
    import dysonian_pl.compare as cmp

    # two conditions only, to keep the test fast
    monkeypatch.setattr(cmp, "DEFAULT_CONDITIONS", cmp.DEFAULT_CONDITIONS[:1])
    out, js = tmp_path / "c.md", tmp_path / "c.json"
    files = []
    strong = REAL / "easyspin-eprfiles" / "strong1.dta"
    if strong.is_file():
        files = ["--files", str(strong)]
    rc = main(["--preset", "set-4", "--n", "4", "--out", str(out), "--json", str(js), *files])
    assert rc == 0
    text = out.read_text()
    assert "### default augmentations" in text and "| lsq-naive |" in text
    data = json.loads(js.read_text())
    assert data["conditions"][0]["n"] == 4
    if files:
        assert "strong1.dta" in text
        row = data["real_files"][0]
        assert row["method"] == "lsq-data" and abs(row["B0"] - 3399.5) < 1.0
    assert capsys.readouterr().out


def test_compare_main_errors(capsys):
    assert main(["--preset", "nope", "--n", "2"]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["--n", "0"]) == 2
