"""How the shipped model reads a line recorded with few points across it, resampled onto
its axis by the cubic of `preprocess.cubic_resample` or by linear interpolation (the
way before session fourteen).

    python scripts/coarse_sampling.py [--geometry plate] [--k 24] [--ppd 4 6 8 12 20 41 100]

Clean simulated lines (dB 1 G on a 20 G sweep, B0 at K positions against the field grid
within ±1 step of the centre), read as `infer` reads them but without the calibration
(so that both interpolations meet the same network: the calibration is fitted on
simulated lines, which are never resampled). Prints, per p and points per width, the
mean error of B0 (± its scatter over the grid positions), of dB and of p, in
thousandths of dB (B0, dB) and of p, and the network's mean sigmas. The number that
matters is each error's change from the densest row.
"""

from __future__ import annotations

import argparse

import numpy as np

import dysonian_pl.preprocess as preprocess
from dysonian_pl import infer
from dysonian_pl.lineshapes import dysonian


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometry", default="plate", choices=("plate", "sphere"))
    ap.add_argument("--k", type=int, default=24, help="grid positions per row")
    ap.add_argument("--ppd", type=int, nargs="+", default=[4, 6, 8, 12, 20, 41, 100])
    ap.add_argument("--p", type=float, nargs="+", default=[0.3, 1.0, 2.0])
    args = ap.parse_args()
    model = infer.load_pretrained(args.geometry)
    cubic = preprocess.cubic_resample
    rng = np.random.default_rng(1)
    for p in args.p:
        for ppd in args.ppd:
            field = np.linspace(3390.0, 3410.0, 20 * ppd + 1)
            step = field[1] - field[0]
            truth = np.column_stack(
                [3400.0 + rng.uniform(-1, 1, args.k) * step, np.ones(args.k), np.full(args.k, p)]
            )
            lines = [dysonian(field, *t, args.geometry) for t in truth]
            axis = np.linspace(field[0], field[-1], model.sim.n_points)
            row = [f"p {p:g} points/width {ppd:3d}"]
            for name in ("linear", "cubic"):
                # prepare_real calls preprocess.cubic_resample for a file coarser than
                # the axis; swapped here for np.interp to measure what it replaced
                preprocess.cubic_resample = cubic if name == "cubic" else np.interp
                try:
                    first = np.stack(
                        [preprocess.prepare_real(field, y, axis).spectrum for y in lines]
                    )
                    got, sig, *_ = infer.read_zoomed(
                        model,
                        first,
                        [(field[0], field[-1])] * args.k,
                        lambda k, ax, field=field, lines=lines: preprocess.prepare_real(
                            field, lines[k], ax
                        ),
                        calibrated=False,
                    )
                finally:
                    preprocess.cubic_resample = cubic
                e = 1e3 * (got - truth)
                s = 1e3 * sig.mean(0)
                row.append(
                    f"{name}: B0 {e[:, 0].mean():+.2f}±{e[:, 0].std():.2f} dB {e[:, 1].mean():+.2f} "
                    f"p {e[:, 2].mean():+.1f}±{e[:, 2].std():.1f} (σ {s[0]:.1f}, {s[1]:.1f}, {s[2]:.1f})"
                )
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
