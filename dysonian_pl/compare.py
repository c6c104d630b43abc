"""CNN vs classical least squares vs both (CNN start, least-squares polish).

On held-out simulated spectra (indices from ``HELD_OUT_START = 10**9`` upwards, far
beyond any training split) every method reads (B0, dB, p) from the same normalised
spectra on ``simulate.field_axis(cfg)``:

* ``cnn``: the predictor alone (timed batched: total time / n);
* ``lsq-naive``: least squares from the window centre, width / 10, p = 1;
* ``lsq-data``: least squares from the data's extrema (``fitting.data_start``);
* ``hybrid``: least squares started at the predictor's output and at the data's
  extrema, the better fit kept (`fitting.fit_best_of`; its time includes both fits
  and the CNN's per-spectrum share).

A spectrum counts as a failure when ``|dB0| > 1 G`` or ``|dp| > 0.05``.
Conditions of the command line: the config's own augmentations, SNR 30 dB, SNR
20 dB and a strong baseline curvature (0.1; the least-squares baseline is
offset + slope + curvature).

Command line::

    python -m dysonian_pl compare [--ckpt model.ckpt] [--preset set-4] [--n 200]
        [--seed 0] [--out docs/compare.md] [--json compare.json] [--files F ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .fitting import FitResult, fit_best_of, fit_spectrum, json_safe, write_atomic
from .params import ConfigError, SimulationConfig, preset

__all__ = ["FAIL_B0_G", "FAIL_P", "HELD_OUT_START", "compare_methods", "held_out_indices", "main"]

#: First sample index of the held-out comparison spectra (never used for training).
HELD_OUT_START = 10**9
#: Failure thresholds: |B0 error| > 1 G or |p error| > 0.05.
FAIL_B0_G = 1.0
FAIL_P = 0.05
NAMES = ("B0", "dB", "p")

Predictor = Callable[[np.ndarray], np.ndarray]


def held_out_indices(n: int) -> np.ndarray:
    return HELD_OUT_START + np.arange(n, dtype=np.int64)


def _condition_config(
    sim: SimulationConfig, snr_db: tuple[float, float] | None, baseline_curvature: float | None
) -> SimulationConfig:
    aug = sim.augment
    changes: dict = {}
    if snr_db is not None:
        lo, hi = (float(v) for v in snr_db)
        changes.update(noise=True, snr_db=(lo, hi))
    if baseline_curvature is not None:
        changes["baseline_curvature"] = float(baseline_curvature)
    return sim.replace(augment=dataclasses.replace(aug, **changes)) if changes else sim


def _summary(pred: np.ndarray, true: np.ndarray, ms: np.ndarray, flags: np.ndarray | None) -> dict:
    err = pred - true
    finite = np.all(np.isfinite(pred), axis=1)
    fail = ~finite | (np.abs(err[:, 0]) > FAIL_B0_G) | (np.abs(err[:, 2]) > FAIL_P)
    out = {
        "mae": {k: float(np.nanmean(np.abs(err[:, i]))) for i, k in enumerate(NAMES)},
        "failure_rate": float(fail.mean()),
        "failures": int(fail.sum()),
        "median_ms": float(np.median(ms)),
        "mean_ms": float(np.mean(ms)),
    }
    if flags is not None:  # the fitter's own verdict (converged, not at a bound)
        out["fit_success_rate"] = float(np.mean(flags))
    return out


def _fit_all(
    B: np.ndarray, X: np.ndarray, geometry: str, starts: Sequence
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.full((len(X), 3), np.nan)
    ms = np.empty(len(X))
    ok = np.zeros(len(X), dtype=bool)
    for i, (x, st) in enumerate(zip(X, starts, strict=True)):
        t0 = time.perf_counter()
        try:
            if isinstance(st, list):  # several starts: the best fit (hybrid)
                r: FitResult = fit_best_of(B, x, st, geometry=geometry)
            else:
                r = fit_spectrum(B, x, geometry=geometry, start=st)
            pred[i] = [r.params[k] for k in NAMES]
            ok[i] = r.success
        except ValueError:
            pass
        ms[i] = 1e3 * (time.perf_counter() - t0)
    return pred, ms, ok


def _run_predictor(predictor: Predictor, X: np.ndarray) -> tuple[np.ndarray, float]:
    """Predictions (N, 3) float64 and the batched time per spectrum (ms)."""
    x32 = np.ascontiguousarray(X, dtype=np.float32)
    t0 = time.perf_counter()
    pred = np.asarray(predictor(x32), dtype=np.float64)
    per = 1e3 * (time.perf_counter() - t0) / max(len(X), 1)
    if pred.shape != (len(X), 3):
        raise ValueError(f"predictor returned shape {pred.shape}; expected ({len(X)}, 3)")
    return pred, per


def compare_methods(
    sim: SimulationConfig,
    n: int,
    seed: int,
    predictor: Predictor | None = None,
    snr_db: tuple[float, float] | None = None,
    baseline_curvature: float | None = None,
) -> dict:
    """Simulate ``n`` held-out spectra of ``sim`` (SNR / curvature overridden when
    given) and compare the methods. Returns ``{"condition", "n", "seed",
    "methods": {name: {"mae": {B0, dB, p}, "failure_rate", "failures",
    "median_ms", "mean_ms"[, "fit_success_rate"]}}}``; ``cnn`` and ``hybrid`` only
    with a predictor (normalised float32 spectra (N, n_points) -> (N, 3) B0, dB, p)."""
    from .simulate import field_axis, simulate

    if sim.wide:
        raise ValueError("compare: wide-line (Joshi) configs are not supported by the fitter")
    if n < 1:
        raise ValueError(f"compare: n must be >= 1 (got {n})")
    cfg = _condition_config(sim, snr_db, baseline_curvature)
    x, y = simulate(cfg, seed, held_out_indices(n))
    X = x.numpy().astype(np.float64)
    true = y.numpy()
    B = field_axis(cfg)
    methods: dict[str, dict] = {}

    cnn_pred = None
    if predictor is not None:
        cnn_pred, per = _run_predictor(predictor, X)
        methods["cnn"] = _summary(cnn_pred, true, np.full(n, per), None)
    for name, mode in (("lsq-naive", "naive"), ("lsq-data", "data")):
        pred, ms, ok = _fit_all(B, X, cfg.geometry, [mode] * n)
        methods[name] = _summary(pred, true, ms, ok)
    if cnn_pred is not None:
        starts = [[tuple(row), "data"] for row in cnn_pred]
        pred, ms, ok = _fit_all(B, X, cfg.geometry, starts)
        methods["hybrid"] = _summary(pred, true, ms + per, ok)

    aug = cfg.augment
    return {
        "condition": {
            "snr_db": list(aug.snr_db) if aug.noise else None,
            "baseline_curvature": aug.baseline_curvature,
        },
        "n": n,
        "seed": seed,
        "methods": methods,
    }


DEFAULT_CONDITIONS: tuple[tuple[str, tuple[float, float] | None, float | None], ...] = (
    ("default augmentations", None, None),
    ("SNR 30 dB", (30.0, 30.0), None),
    ("SNR 20 dB", (20.0, 20.0), None),
    ("baseline curvature 0.1", None, 0.1),
)


def markdown(result: dict, title: str) -> str:
    lines = [
        f"### {title} (n = {result['n']}, seed {result['seed']})",
        "",
        "| method | B0 MAE (G) | dB MAE (G) | p MAE | failure rate | fit success | median ms | mean ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["methods"].items():
        fs = m.get("fit_success_rate")
        lines.append(
            f"| {name} | {m['mae']['B0']:.3f} | {m['mae']['dB']:.3f} | {m['mae']['p']:.4f} | "
            f"{m['failure_rate']:.3f} | {'-' if fs is None else f'{fs:.3f}'} | "
            f"{m['median_ms']:.2f} | {m['mean_ms']:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def _load_model(path: str):
    """The checkpoint's model (`infer.load_model`: safe loading, no Lightning) and a predictor."""
    import torch

    from .infer import load_model

    model = load_model(path)

    def predictor(x: np.ndarray, batch: int = 256) -> np.ndarray:
        out = [
            model.predict_physical(torch.from_numpy(x[a : a + batch])).cpu().numpy()
            for a in range(0, len(x), batch)
        ]
        return np.concatenate(out).astype(np.float64)

    return model, predictor


def _check_preset_matches(name: str, cfg: SimulationConfig, ckpt_sim: SimulationConfig) -> None:
    for attr in ("window", "n_points", "geometry"):
        a, b = getattr(cfg, attr), getattr(ckpt_sim, attr)
        if a != b:
            raise ConfigError(
                f"--preset {name}: {attr} {a!r} differs from the checkpoint's {b!r}; "
                "the network reads only spectra on its own field axis (drop --preset to use "
                "the checkpoint's config)"
            )


def _real_files_table(
    files: Sequence[str], sim: SimulationConfig, predictor: Predictor | None
) -> tuple[str, list[dict]]:
    from .infer import to_physical
    from .preprocess import prepare_real
    from .readers import SpectrumFileError, read_spectrum
    from .simulate import field_axis

    axis = field_axis(sim)
    rows: list[dict] = []
    for path in files:
        name = Path(path).name
        try:
            spec = read_spectrum(path)
            B = np.asarray(spec.field, dtype=np.float64)
            yv = np.asarray(spec.intensity, dtype=np.float64)
            ok = np.isfinite(B) & np.isfinite(yv)
            order = np.argsort(B[ok], kind="stable")
            B, yv = B[ok][order], yv[ok][order]
            entries = []
            r = fit_spectrum(B, yv, geometry=sim.geometry, start="data")
            entries.append(("lsq-data", r.params, r.success, 1e3 * r.seconds))
            if predictor is not None:
                file_axis, sweep = axis, None
                if sim.relative_window and B.size >= 2 and B[-1] > B[0]:
                    # a window-agnostic model reads the file's own sweep (see infer)
                    sweep = (float(B[0]), float(B[-1]))
                    file_axis = np.linspace(sweep[0], sweep[1], sim.n_points)
                prep = prepare_real(B, yv, file_axis, name=name)
                pred, per = _run_predictor(predictor, prep.spectrum[None])
                pred = to_physical(sim, pred, None, sweep)[0]
                cnn = dict(zip(NAMES, (float(v) for v in pred[0]), strict=True))
                entries.insert(0, ("cnn", cnn, None, per))
                h = fit_best_of(B, yv, [tuple(pred[0]), "data"], geometry=sim.geometry)
                entries.append(("hybrid", h.params, h.success, per + 1e3 * h.seconds))
        except (SpectrumFileError, ValueError) as exc:
            msg = " ".join(str(exc).split())
            print(f"error: {msg}", file=sys.stderr)
            rows.append({"file": name, "error": msg})
            continue
        for method, params, success, ms in entries:
            rows.append(
                {
                    "file": name,
                    "method": method,
                    **{k: float(params[k]) for k in NAMES},
                    "success": None if success is None else bool(success),
                    "ms": float(ms),
                }
            )
    lines = [
        "### Real files",
        "",
        "| file | method | B0 (G) | dB (G) | p | success | ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['file']} | error: {r['error']} | | | | | |")
        else:
            lines.append(
                f"| {r['file']} | {r['method']} | {r['B0']:.3f} | {r['dB']:.3f} | {r['p']:.4f} | "
                f"{_yes_no(r['success'])} | {r['ms']:.1f} |"
            )
    return "\n".join(lines), rows


def _yes_no(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl compare",
        description="CNN vs least squares vs hybrid on held-out simulated spectra (and real files).",
    )
    ap.add_argument("--ckpt", help="trained DysonianRegressor checkpoint (adds cnn and hybrid)")
    ap.add_argument(
        "--preset",
        help="simulation preset (default set-4; with --ckpt it must match the checkpoint's axis)",
    )
    ap.add_argument("--n", type=int, default=200, help="held-out spectra per condition")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the Markdown tables here")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--files", nargs="+", default=[], help="real spectrometer files to compare on")
    args = ap.parse_args(argv)

    try:
        predictor = None
        if args.ckpt:
            model, predictor = _load_model(args.ckpt)
            sim = model.sim
            if args.preset:
                cfg = preset(args.preset)
                _check_preset_matches(args.preset, cfg, sim)
                sim = cfg
        else:
            sim = preset(args.preset or "set-4")
        if args.n < 1:
            raise ConfigError(f"--n: must be >= 1 (got {args.n})")
    except (ConfigError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2

    sections = [
        f"## Method comparison: window {sim.window[0]:g}-{sim.window[1]:g} G, "
        f"{sim.n_points} points, {sim.geometry}, B0 {sim.B0}, dB {sim.dB}, p {sim.p}",
        f"Failure: |dB0| > {FAIL_B0_G:g} G or |dp| > {FAIL_P:g}. 'fit success' is the "
        "fitter's own verdict (converged, no parameter at a bound).",
    ]
    results = []
    for title, snr, curv in DEFAULT_CONDITIONS:
        res = compare_methods(sim, args.n, args.seed, predictor, snr, curv)
        res["title"] = title
        results.append(res)
        table = markdown(res, title)
        print(table + "\n", flush=True)
        sections.append(table)
    real_rows: list[dict] = []
    if args.files:
        table, real_rows = _real_files_table(args.files, sim, predictor)
        print(table)
        sections.append(table)
    if args.out:
        write_atomic(args.out, "\n\n".join(sections) + "\n")
    if args.json:
        payload = {
            "sim": sim.to_dict(),
            "ckpt": args.ckpt,
            "conditions": results,
            "real_files": real_rows,
        }
        write_atomic(args.json, json.dumps(json_safe(payload), indent=2) + "\n")
    return 1 if any("error" in r for r in real_rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
