"""Calibration of a window-agnostic model's standard deviations as `infer` reads spectra.

The network's sigmas are scaled during training by one factor per parameter so that
68.3 % of the validation errors fall inside ±1 sigma (`module.DysonianRegressor`). That
validation split is read on the whole sweep; `infer` (and `sets`) read a narrow line
again on a window zoomed around it, where the resampled noise is smoother and the
errors differ, and the error distribution also changes with p (it grows towards the
fold of A/D, `lineshapes.p_fold`). Scaling by one factor overall leaves the coverage
right on average and wrong in parts of the input space.

`fit_table` measures, on fresh simulated spectra of the model's own ranges read
through the same path as `infer` (`infer.predict_zoomed`), the factor per parameter
in each cell of (zoomed or not) x (predicted p / p_fold, in bins): the 68.3 % quantile
of |error| / sigma there. A cell with fewer than `MIN_PER_CELL` spectra keeps the
overall factor of its zoom state. `apply_table` multiplies the sigmas by the factor of
the cell each prediction falls in (by the *predicted* p, never the truth). The table
travels in the checkpoint's ``dysonian_pl`` section as ``sigma_calibration``.

    python -m dysonian_pl calibrate --ckpt model.ckpt --out calibrated.ckpt

NumPy only: `infer` applies it without importing torch.
"""

from __future__ import annotations

import math

import numpy as np

from .lineshapes import p_fold

__all__ = ["ONE_SIGMA", "P_EDGES", "MIN_PER_CELL", "apply_table", "fit_table", "cell_index"]

#: probability mass within ±1 sigma of a Gaussian
ONE_SIGMA = math.erf(1 / math.sqrt(2))
#: bin edges of predicted p / p_fold (the last bin reaches the fold, where p is poorly
#: determined and the sigmas grow)
P_EDGES = (0.0, 0.3, 0.5, 0.65, 0.8, 0.9, float("inf"))
#: fewest spectra in a cell for its own factors
MIN_PER_CELL = 300
TABLE_VERSION = 1


def cell_index(p_pred: np.ndarray, zoomed: np.ndarray, geometry: str, edges=P_EDGES) -> np.ndarray:
    """The (zoom, p-bin) cell of each prediction, as one flat index zoom * n_bins + bin."""
    ratio = np.asarray(p_pred, dtype=np.float64) / p_fold(geometry)
    b = np.clip(np.searchsorted(np.asarray(edges[1:-1]), ratio, side="right"), 0, len(edges) - 2)
    return np.asarray(zoomed, dtype=np.int64) * (len(edges) - 1) + b


def fit_table(
    values: np.ndarray,
    sigmas: np.ndarray,
    truth: np.ndarray,
    zoomed: np.ndarray,
    geometry: str,
    *,
    p_column: int = 2,
    min_per_cell: int = MIN_PER_CELL,
) -> dict:
    """The calibration table from predictions (values, sigmas: N x 3, physical units),
    the true values and each prediction's zoom state.

    Returns a JSON-able dict: ``factors[cell][param]``, ``counts[cell]``, the bin edges,
    the geometry. Factors multiply the sigmas `values`/`sigmas` came with.
    """
    values, sigmas, truth = (np.asarray(a, dtype=np.float64) for a in (values, sigmas, truth))
    zoomed = np.asarray(zoomed, dtype=bool)
    if not (values.shape == sigmas.shape == truth.shape and values.ndim == 2):
        raise ValueError("values, sigmas and truth must be arrays of one shape (N, 3)")
    if not (np.isfinite(sigmas) & (sigmas > 0)).all():
        raise ValueError("every sigma must be finite and > 0 (a model with uncertainty)")
    z = np.abs(values - truth) / sigmas
    n_bins = len(P_EDGES) - 1
    cells = cell_index(values[:, p_column], zoomed, geometry)
    factors, counts = [], []
    for zoom in (False, True):
        rows = zoomed == zoom
        overall = (
            np.quantile(z[rows], ONE_SIGMA, axis=0)
            if rows.sum() >= min_per_cell
            else np.quantile(z, ONE_SIGMA, axis=0)
        )
        for b in range(n_bins):
            inside = cells == int(zoom) * n_bins + b
            counts.append(int(inside.sum()))
            f = (
                np.quantile(z[inside], ONE_SIGMA, axis=0)
                if inside.sum() >= min_per_cell
                else overall
            )
            factors.append([float(v) for v in f])
    return {
        "version": TABLE_VERSION,
        "geometry": geometry,
        "p_edges_over_fold": [float(e) for e in P_EDGES],
        "factors": factors,
        "counts": counts,
    }


def apply_table(
    table: dict | None,
    values: np.ndarray,
    sigmas: np.ndarray,
    zoomed: np.ndarray,
    p_column: int = 2,
) -> np.ndarray:
    """`sigmas` multiplied by the factors of each prediction's cell (a copy; unchanged
    when `table` is None)."""
    sigmas = np.array(sigmas, dtype=np.float64)
    if not table:
        return sigmas
    if table.get("version") != TABLE_VERSION:
        raise ValueError(
            f"sigma_calibration: table version {table.get('version')!r} is not "
            f"{TABLE_VERSION} (written by another dysonian_pl version)"
        )
    edges = tuple(table["p_edges_over_fold"])
    factors = np.asarray(table["factors"], dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    cells = cell_index(values[..., p_column], zoomed, table["geometry"], edges)
    return sigmas * factors[cells]


def calibrate_model(model, n: int, seed: int, rounds: int | None = None) -> tuple[dict, dict]:
    """Fit the table for a window-agnostic model on `n` fresh spectra of its own ranges
    (indices from 2 * 10**9: in no training, validation, test or `sets` split), read as
    `infer` reads them. Returns (table, summary) where the summary has the coverage
    before and after on a second, independent draw of `n` spectra."""
    from .infer import ZOOM_ROUNDS, predict_zoomed
    from .simulate import field_axis, simulate

    if not getattr(model.sim, "relative_window", False):
        raise ValueError("calibrate: only window-agnostic models (sim.relative_window) zoom")
    if not getattr(model, "uncertainty", False):
        raise ValueError(
            "calibrate: the model has no uncertainty head (train with --model.uncertainty true)"
        )
    rounds = ZOOM_ROUNDS if rounds is None else rounds
    axis = field_axis(model.sim)
    width = axis[-1] - axis[0]

    def read(offset: int):
        x, y = simulate(model.sim, seed, offset + np.arange(n))
        values, sigmas, windows = predict_zoomed(
            model, axis, x.numpy(), rounds=rounds, calibrated=False
        )
        zoomed = windows[:, 1] - windows[:, 0] < 0.999 * width
        return values, sigmas, y.numpy().astype(np.float64), zoomed

    fit_set, check_set = read(2 * 10**9), read(3 * 10**9)
    table = fit_table(*fit_set, model.sim.geometry)
    values, sigmas, truth, zoomed = check_set
    err = np.abs(values - truth)
    after = apply_table(table, values, sigmas, zoomed)
    summary = {
        "n": n,
        "seed": seed,
        "zoomed_fraction": float(zoomed.mean()),
        "before": {
            "cover1": (err <= sigmas).mean(0).tolist(),
            "cover2": (err <= 2 * sigmas).mean(0).tolist(),
        },
        "after": {
            "cover1": (err <= after).mean(0).tolist(),
            "cover2": (err <= 2 * after).mean(0).tolist(),
        },
    }
    return table, summary


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl calibrate",
        description="Fit the sigma calibration of a window-agnostic model as infer reads "
        "spectra (zoom included) and write a calibrated copy of its checkpoint.",
    )
    ap.add_argument(
        "--ckpt", required=True, help="checkpoint of a window-agnostic model with uncertainty"
    )
    ap.add_argument(
        "--out", required=True, help="calibrated checkpoint to write (may equal --ckpt)"
    )
    ap.add_argument(
        "--n",
        type=int,
        default=20000,
        help="spectra to fit on, and as many to check on (default 20000)",
    )
    ap.add_argument("--seed", type=int, default=777, help="simulation seed (default 777)")
    args = ap.parse_args(argv)
    if args.n < 10 * MIN_PER_CELL:
        print(f"error: --n: at least {10 * MIN_PER_CELL} spectra (got {args.n})", file=sys.stderr)
        return 2

    import torch

    from .atomic import atomic_open
    from .infer import CheckpointError, load_model, read_checkpoint

    try:
        ckpt = read_checkpoint(args.ckpt)
        model = load_model(args.ckpt)
        table, summary = calibrate_model(model, args.n, args.seed)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: --ckpt {args.ckpt}: {e}", file=sys.stderr)
        return 2
    table["fitted_on"] = {
        "n": args.n,
        "seed": args.seed,
        "zoomed_fraction": summary["zoomed_fraction"],
    }
    ckpt["dysonian_pl"] = {**ckpt["dysonian_pl"], "sigma_calibration": table}
    out = Path(args.out)
    with atomic_open(out, "wb") as fh:
        torch.save(ckpt, fh)
    names = list(model.names)
    print(
        f"{out}: sigma calibration by zoom state and p / p_fold ({summary['zoomed_fraction']:.0%} zoomed)"
    )
    print(
        "| check draw | "
        + " | ".join(f"±1σ {n}" for n in names)
        + " | "
        + " | ".join(f"±2σ {n}" for n in names)
        + " |"
    )
    print("|" + " --- |" * (1 + 2 * len(names)))
    for key in ("before", "after"):
        s = summary[key]
        print(f"| {key} | " + " | ".join(f"{v:.3f}" for v in s["cover1"] + s["cover2"]) + " |")
    print(json.dumps(table["factors"]))
    return 0
