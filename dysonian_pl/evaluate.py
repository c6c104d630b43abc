"""`python -m dysonian_pl sets`: a checkpoint on every prior-work data set, with calibration.

For each preset set (physics.md) the set's own spectra are simulated on its own
window and points (indices from 10**9 up, never in any training split), the model
predicts, and the table gives MAE per parameter in physical units beside the prior
work's published MAE, and, for models with uncertainty, the fraction of true values
inside the predicted +-1 sigma and +-2 sigma. A reliability plot (observed coverage
against nominal Gaussian coverage, per parameter and set) is written as a PNG.

A window-agnostic model (``sim.relative_window``) reads any set; a fixed-window model
reads only the sets whose window, points and geometry are its own.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from .atomic import atomic_open, atomic_write_text
from .infer import ZOOM_ROUNDS, load_model, predict_zoomed, zoomed_flags
from .params import PRESETS, SimulationConfig
from .simulate import field_axis, simulate

#: The prior work's held-out MAE (physics.md): B0 (G), dB (G), p.
PUBLISHED_MAE = {
    "set-1": (1.14, 0.27, 0.012),
    "set-3": (0.67, 0.51, 0.021),
    "set-4": (0.56, 0.77, 0.022),
    "set-5": (0.80, 0.33, 0.015),
}
SETS = ("set-1", "set-2", "set-3", "set-4", "set-5", "set-6")
NOMINAL = np.linspace(0.05, 0.95, 19)  # central interval probabilities for the reliability plot


def _readable(model_sim: SimulationConfig, cfg: SimulationConfig) -> str | None:
    """Why this model cannot read this set, or None."""
    if model_sim.geometry != cfg.geometry:
        return f"geometry {cfg.geometry} (model: {model_sim.geometry})"
    if model_sim.relative_window:
        return None
    if tuple(model_sim.window) != tuple(cfg.window) or model_sim.n_points != cfg.n_points:
        return "another window (a fixed-window model reads only its own)"
    return None


def evaluate_set(model, cfg: SimulationConfig, n: int, seed: int, zoom: bool = True) -> dict:
    """MAE, coverage and |error|/sigma quantiles of `model` on `n` spectra of `cfg`.

    A window-agnostic model reads narrow lines again on a zoomed window, as `infer`
    does (`zoom` False: the whole window only)."""
    if model.sim.relative_window and cfg.n_points != model.sim.n_points:
        cfg = cfg.replace(
            n_points=model.sim.n_points
        )  # the set's window and ranges, the model's points
    index = 10**9 + np.arange(n)
    x, y = simulate(cfg, seed, index)
    values, sigmas, windows = predict_zoomed(
        model, field_axis(cfg), x.numpy(), rounds=ZOOM_ROUNDS if zoom else 0
    )
    truth = y.numpy()
    err = np.abs(values - truth)
    out: dict = {"n": n, "mae": err.mean(axis=0).tolist()}
    if model.sim.relative_window:
        width = cfg.window[1] - cfg.window[0]
        # per parameter: each is read on its own chain of windows (infer.READ_RULES)
        out["zoomed_fraction"] = zoomed_flags(windows, width).mean(axis=0).tolist()
    if np.isfinite(sigmas).all():
        z = err / sigmas
        out["cover1"] = (z <= 1).mean(axis=0).tolist()
        out["cover2"] = (z <= 2).mean(axis=0).tolist()
        from scipy.special import erfinv

        k = math.sqrt(2) * erfinv(NOMINAL)  # half-width in sigmas of each central interval
        out["reliability"] = [
            (z[:, None, :] <= k[None, :, None]).mean(axis=0)[:, i].tolist() for i in range(3)
        ]
        # where p is not identifiable the model should say so: sigma_p by true p
        p = truth[:, 2]
        bins = np.linspace(cfg.p[0], cfg.p[1], 6)
        which = np.clip(np.digitize(p, bins) - 1, 0, len(bins) - 2)
        out["p_sigma_by_p"] = [
            [
                float(bins[b]),
                float(bins[b + 1]),
                float(np.median(sigmas[which == b, 2])),
                float(np.mean(err[which == b, 2])),
            ]
            for b in range(len(bins) - 1)
            if (which == b).any()
        ]
    return out


def _table(results: dict, names: tuple[str, ...]) -> str:
    has_sigma = any("cover1" in r for r in results.values() if isinstance(r, dict))
    head = "| set | n | " + " | ".join(f"MAE {n}" for n in names) + " | published MAE (B0, dB, p) |"
    has_ref = any("ratio" in r for r in results.values() if isinstance(r, dict))
    if has_sigma:
        head += " within 1 sigma (B0, dB, p) | within 2 sigma (B0, dB, p) |"
    if has_ref:
        head += " per-set model MAE (B0, dB, p) | ratio to it (B0, dB, p) |"
    rows = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, r in results.items():
        if "skipped" in r:
            rows.append(f"| {name} | - | skipped: {r['skipped']} |")
            continue
        pub = PUBLISHED_MAE.get(name)
        row = f"| {name} | {r['n']} | " + " | ".join(f"{v:.4g}" for v in r["mae"])
        row += " | " + (", ".join(f"{v:g}" for v in pub) if pub else "-") + " |"
        if "cover1" in r:
            row += " " + ", ".join(f"{v:.3f}" for v in r["cover1"]) + " | "
            row += ", ".join(f"{v:.3f}" for v in r["cover2"]) + " |"
        elif has_sigma:
            row += " - | - |"
        if "ratio" in r:
            row += " " + ", ".join(f"{v:.4g}" for v in r["reference"]["mae"]) + " | "
            row += ", ".join(f"{v:.2f}" for v in r["ratio"]) + " |"
        elif has_ref:
            row += " - | - |"
        rows.append(row)
    return "\n".join(rows)


def _reliability_png(results: dict, names: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for i, ax in enumerate(axes):
        for name, r in results.items():
            if "reliability" in r:
                ax.plot(NOMINAL, r["reliability"][i], "o-", ms=3, label=name)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(names[i])
        ax.set_xlabel("nominal coverage (Gaussian)")
        ax.set_ylabel("observed coverage")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl sets", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--ckpt", required=True, help="checkpoint (.ckpt, .npz) or ensemble manifest to evaluate"
    )
    ap.add_argument(
        "--sets",
        nargs="*",
        default=list(SETS),
        help="presets to evaluate (default: set-1 .. set-6)",
    )
    ap.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="SET=CKPT",
        help="a model trained for that set alone (repeatable): adds its MAE on the same "
        "spectra and the ratio of --ckpt's MAE to it",
    )
    ap.add_argument("--n", type=int, default=2000, help="spectra per set (default 2000)")
    ap.add_argument(
        "--no-zoom",
        action="store_true",
        help="a window-agnostic model reads each spectrum on the whole window only (by "
        "default narrow lines are read again on a zoomed window, as infer does)",
    )
    ap.add_argument("--seed", type=int, default=12345, help="simulation seed (default 12345)")
    ap.add_argument(
        "--out", default="sets_eval", help="output folder for sets.md, sets.json, reliability.png"
    )
    args = ap.parse_args(argv)
    references: dict[str, str] = {}
    for item in args.reference:
        name, sep, path = item.partition("=")
        if not sep or name not in PRESETS or not path:
            print(
                f"error: --reference: expected SET=CKPT with SET one of {', '.join(SETS)} "
                f"(got {item!r})",
                file=sys.stderr,
            )
            return 2
        references[name] = path
    model = load_model(args.ckpt)
    results: dict = {}
    for name in args.sets:
        if name not in PRESETS:
            print(
                f"error: --sets: unknown set {name!r} (allowed: {', '.join(sorted(PRESETS))})",
                file=sys.stderr,
            )
            return 2
        why = _readable(model.sim, PRESETS[name])
        results[name] = (
            {"skipped": why}
            if why
            else evaluate_set(model, PRESETS[name], args.n, args.seed, zoom=not args.no_zoom)
        )
    for name, path in references.items():
        if name not in results or "skipped" in results[name]:
            continue
        ref = load_model(path)
        why = _readable(ref.sim, PRESETS[name])
        if why:
            print(f"error: --reference {name}={path}: the model cannot read {why}", file=sys.stderr)
            return 2
        ref_mae = evaluate_set(ref, PRESETS[name], args.n, args.seed, zoom=False)["mae"]
        results[name]["reference"] = {"ckpt": path, "mae": ref_mae}
        results[name]["ratio"] = [a / b for a, b in zip(results[name]["mae"], ref_mae, strict=True)]
    out = Path(args.out)
    table = _table(results, model.names)
    print(table)
    command = "python -m dysonian_pl sets " + " ".join(sys.argv[2:] if argv is None else argv)
    atomic_write_text(out / "sets.md", f"`{command}`\n\n{table}\n")
    atomic_write_text(
        out / "sets.json", json.dumps({"ckpt": str(args.ckpt), "results": results}, indent=1)
    )
    if any("reliability" in r for r in results.values()):
        _reliability_png(results, model.names, out / "reliability.png")
    return 0
