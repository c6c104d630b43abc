"""`infer.predict_arrays` on the shipped plate model: its numpy export (what `infer`
runs with no --ckpt) against the torch checkpoint, 1,024 set-size spectra batched and
the median of 50 one-spectrum calls, three interleaved rounds.

    python scripts/bench_predict_arrays.py
"""

import time

import numpy as np

from dysonian_pl import infer
from dysonian_pl.simulate import simulate


def main() -> None:
    models = {
        "numpy": infer.load_pretrained("plate"),
        "torch": infer.load_model(infer.default_checkpoint("plate")),
    }
    x = simulate(models["torch"].sim, 0, 10**9 + np.arange(1024))[0].numpy()
    for rnd in range(3):
        for name, m in models.items():
            infer.predict_arrays(m, x[:256], return_sigma=True)  # warm-up
            t = time.perf_counter()
            infer.predict_arrays(m, x, return_sigma=True)
            rate = len(x) / (time.perf_counter() - t)
            lat = []
            for i in range(50):
                t0 = time.perf_counter()
                infer.predict_arrays(m, x[i : i + 1], return_sigma=True)
                lat.append(time.perf_counter() - t0)
            print(
                f"round {rnd} {name}: {rate:,.0f} spectra/s batched (1024), "
                f"one spectrum median {1e3 * np.median(lat):.2f} ms"
            )


if __name__ == "__main__":
    main()
