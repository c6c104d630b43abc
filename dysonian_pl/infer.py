"""Inference on measured spectra: read files, predict (B0, dB, p), reconstruct, report.

``python -m dysonian_pl infer FILES_OR_GLOBS... --ckpt model.ckpt`` reads every file
(BES3T, ESP/WinEPR, Magnettech, CIQTEK, Adani, Active Spectrum, text: `readers`),
prepares it exactly as training data are prepared
(`preprocess.prepare_real`: finite points, ascending field, median baseline,
resampling onto the model's axis, polarity rule, peak-to-peak 1), predicts the line
parameters with the CNN, and rebuilds the predicted line in the file's units by a
linear least-squares fit of amplitude and a straight baseline. It writes
``predictions.csv`` and ``predictions.json`` (atomically) and one overlay plot per
spectrum (SVG drawn by `svgplot` without matplotlib, or PNG with ``--plot-format png``), and
prints a Markdown table.

A window-agnostic model (``sim.relative_window``) reads every file on the file's own
sweep: the sweep is resampled onto ``n_points`` and mapped onto the model's nominal
window, and its predictions are mapped back (`to_physical`). A model trained with
``uncertainty`` adds calibrated standard deviations (``B0_sigma``, ...). Without
``--ckpt`` the pretrained model shipped in ``dysonian_pl/pretrained/`` is used
(`load_pretrained`): the ensemble its manifest names (``universal-*.ensemble.json``,
`ensemble`) when there is one, else the one model; each model through its numpy export
(``.npz``, `npnet`), so that one file is read without importing torch (or matplotlib,
scipy, Lightning) at all; the ``.ckpt`` beside it (with torch) only if the export is
missing or was not made from that ``.ckpt``. ``--ckpt`` also takes an ensemble manifest.

Checkpoints are read with ``torch.load(weights_only=True)`` (no unpickling of
arbitrary objects); the model is rebuilt from the checkpoint's plain
``hyper_parameters`` and ``state_dict`` as a `predictor.Predictor` (the trained
network without Lightning, which this module never imports). A checkpoint holding
other objects is refused unless ``trust=True`` (``--trust``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.resources
import io
import json
import math
import os
import pickle
import sys
import textwrap
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import CHECKPOINT_FORMAT, __version__
from .atomic import atomic_open
from .calibration import R_RANGE, apply_bias, apply_calibration, beyond_range, outside_answers
from .lineshapes import ad_ratio, dysonian, g_factor, joshi, p_fold, p_twin
from .npnet import ModelFileError, NumpyPredictor, load_npz, sha256_of
from .params import GEOMETRIES, PARAMETERS, field_axis
from .preprocess import normalise, prepare_real
from .readers import (
    FIELD_UNITS,
    SUPPORTED,
    UNIT_ASSUMED,
    SpectrumFileError,
    looks_like_spectrum,
    read_all_slices,
    read_spectrum,
)
from .svgplot import overlay_svg

if TYPE_CHECKING:  # torch is imported only for a .ckpt (see the module docstring)
    from .predictor import Predictor

__all__ = [
    "CheckpointError",
    "default_checkpoint",
    "default_ensemble",
    "default_npz",
    "load_pretrained",
    "to_physical",
    "load_model",
    "predict_arrays",
    "predict_zoomed",
    "read_zoomed",
    "zoomed_flags",
    "twin_of",
    "infer_files",
    "expand_inputs",
    "main",
]

#: Which slices of a 2D file `infer_files` reads: the first, or all (one row each).
SLICES = ("first", "all")
#: Overlay plot formats: SVG drawn by `svgplot.overlay_svg` (no matplotlib), PNG by matplotlib.
PLOT_FORMATS = ("svg", "png")
#: Spectra per forward pass in `predict_arrays`.
BATCH = 256
#: Below this many spectra `predict_arrays` runs on one thread unless told otherwise.
SMALL_BATCH = 64
#: A prediction this close to an end of its training range (fraction of the span) is flagged.
EDGE_FRACTION = 0.02
#: p's standard deviation above this fraction of its training span is flagged (and, with
#: a twin (`lineshapes.p_twin`), reported as the twin ambiguity).
P_SIGMA_FRACTION = 0.15
#: rms residual of the reconstruction (fraction of peak-to-peak) above which a spectrum
#: is reported as not explained by one line of the model's kind
RMS_WARN = 0.1
#: fraction of the signal's variance (about a straight baseline) the reconstructed line
#: must explain; below it the spectrum is reported as not one line of the model's kind
#: (a line that is a small part of a noisy sweep can pass RMS_WARN and still be missed)
EXPLAINED_WARN = 0.8
#: A window-agnostic model reads a narrow line again on a window zoomed around it: when
#: dB is below ZOOM_BELOW of the window read, the next window is centred on B0 with dB
#: at ZOOM_TARGET of it (the log-middle of the trained 1-50 %), inside the measured
#: sweep; at most ZOOM_ROUNDS times. This *main reading* is the one `infer` reports (its
#: window and zoom columns), overlays and checks the reconstruction on, and the first of
#: the readings dB and p are the mean of (READ_RULES).
ZOOM_BELOW = 0.04
ZOOM_TARGET = 0.10
ZOOM_ROUNDS = 3
#: Each parameter is read on its own chains of readings, one chain per (below, target)
#: rule as above, and is the mean of its chains' final readings (sigma: the mixture's,
#: mean variance plus the spread of the readings, as `ensemble` combines networks).
#: B0 is the mean of readings with the line at 25 % (its first: the window `B0_zoom`
#: reports), 20 % and 30 % of the window (4, 5 and 3.3 line widths): a narrow window
#: reads B0 better than ZOOM_TARGET's (25 % alone: B0 MAE 1.2-3.3x lower on the
#: prior-work sets, 1.7x over the training ranges), but one reading on a window
#: narrower still is biased (40 %: -1.2 to -2.7 per mille of the window, as large as
#: the scatter, so that no sigma can be calibrated on it); the mean of the three is
#: 1-6 % better than 25 % alone on every set and over the training ranges, and its
#: errors fit a calibrated sigma better (its spread carries part of the error one
#: reading cannot see). dB and p are the mean of readings with the line at 10 %
#: (ZOOM_TARGET's: wider windows keep the wings, where the dispersion part shows),
#: 15 % and 25 % of the window (on the plate ensemble dB 4-40 % and p 3-24 % lower
#: than ZOOM_TARGET's reading alone; one reading at 40 % made p 31-44 % worse over the
#: training ranges). Measured on the shipped plate ensemble and sphere and on 3,000-
#: and 6,000-step models of the same recipe (docs/model_card.md).
READ_RULES: tuple[tuple[tuple[float, float], ...], ...] = (
    ((0.25, 0.25), (0.20, 0.20), (0.30, 0.30)),
    ((ZOOM_BELOW, ZOOM_TARGET), (0.15, 0.15), (0.25, 0.25)),
    ((ZOOM_BELOW, ZOOM_TARGET), (0.15, 0.15), (0.25, 0.25)),
)
#: the narrowest window a zoom reads, as a fraction of the sweep (16 points of a
#: 4096-point sweep): a line predicted narrower is read on this window, never on a
#: window of a few recorded points or less (which an untrained model's tiny dB asked for)
ZOOM_MIN_FRACTION = 1.0 / 256


def zoom_window(
    B0: float,
    dB: float,
    sweep: tuple[float, float],
    current: tuple[float, float],
    below: float | None = None,
    target: float | None = None,
) -> tuple[float, float] | None:
    """The next window for a line (B0, dB) read on `current`, or None to keep it.

    None when the line is not narrow in `current` (dB >= `below` of it; default
    ZOOM_BELOW), when the prediction is not usable (non-finite, dB <= 0, B0 outside the
    sweep), or when the new window (dB / `target` wide, default ZOOM_TARGET) would not
    be at least 1.5x narrower. The new window is never narrower than ZOOM_MIN_FRACTION
    of the sweep.
    """
    below = ZOOM_BELOW if below is None else below
    target = ZOOM_TARGET if target is None else target
    width = current[1] - current[0]
    lo, hi = sweep
    if not (math.isfinite(B0) and math.isfinite(dB) and dB > 0 and lo <= B0 <= hi):
        return None
    if dB >= below * width:
        return None
    new = min(max(dB / target, ZOOM_MIN_FRACTION * (hi - lo)), hi - lo)
    if new * 1.5 > width:
        return None
    start = min(max(B0 - new / 2, lo), hi - new)
    return (start, start + new)


# pickle header of torch's legacy (non-zip) serialisation: protocol 2 + its magic number
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
# which spectrum file extensions are companions of another
_COMPANION_OF = {".dta": ".dsc", ".spc": ".par"}  # data file -> descriptor read instead

UNITS = {
    "B0": "G (resonance field)",
    "dB": "G (line width; plate: peak-to-peak width, sphere: half width)",
    "p": "dimensionless (plate 2d/delta, sphere d/delta)",
    "alpha": "dimensionless (wide-line dispersion admixture)",
    "amplitude": (
        "file intensity units: peak-to-peak height of the reconstructed line, with the "
        "line's polarity as in the file after the polarity rule (positive for a good fit)"
    ),
    "baseline_offset": (
        "file intensity units: straight baseline at the centre of the model's window "
        "(includes the median the preprocessing subtracted)"
    ),
    "baseline_slope": "file intensity units per G",
    "rms_residual": "rms of (measured - reconstructed) over the measured sweep (the whole sweep also for a zoomed reading) / measured peak-to-peak",
    "explained": "fraction of the measured signal's variance about a straight baseline that the reconstructed line explains",
    "coverage": "fraction of the model's window covered by the measured sweep",
    "sweep_lo": "G",
    "sweep_hi": "G",
    "window_lo": (
        "G (the window of the main reading: the sweep, or a zoom around a narrow line; "
        "the overlay's, except for an unreliable row, whose overlay shows the whole sweep)"
    ),
    "window_hi": "G",
    "zoom": (
        "sweep width / window width (1: no zoom) of the main reading: the one the overlay "
        "shows and the first of those dB and p are the mean of"
    ),
    "B0_zoom": (
        "sweep width / width of the first window B0 was read on (zoomed: the line is 25 % "
        "of it; B0 is the mean of readings where the line is 25, 20 and 30 %); dB and p are "
        "the mean of readings on the main window (zoom) and on windows where the line is "
        "15 % and 25 %"
    ),
    "slice": "index of the slice read of a 2D file (0: the first); empty for a 1D file",
    "plot": "overlay plot in the output folder (measured, reconstructed line, residual)",
    "status": (
        "ok; unreliable (read, but one line of the model's kind does not explain the "
        "spectrum: do not trust its numbers); error (not read: see error)"
    ),
    "reader_notes": (
        "what the file reader assumed or chose (a field unit assumed, decimal commas, the "
        "column or slice read), joined by '; '"
    ),
    "B0_sigma": "G, calibrated standard deviation of B0 (68 % of errors inside +-1 sigma)",
    "dB_sigma": "G, calibrated standard deviation of dB",
    "p_sigma": "calibrated standard deviation of p",
    "p_twin": (
        "the other p that gives exactly the same line shape as p (the other side of the fold "
        "of A/D, dysonian_pl.lineshapes.p_twin); empty/null where there is none"
    ),
    "p_twin_sigma": "standard deviation of p_twin (p_sigma propagated through A/D)",
    "frequency_ghz": "GHz, the microwave frequency the file states; empty where it states none",
    "g": (
        "h nu / (mu_B B0) from the file's frequency (dysonian_pl.lineshapes.g_factor); empty "
        "without a frequency"
    ),
    "g_sigma": "g * B0_sigma / B0 (the file's frequency taken as exact)",
    "alpha_sigma": "calibrated standard deviation of alpha",
}


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, not ours or too new; one-line message."""


def _pretrained_dir():
    """The folder of the shipped models (a Traversable; a Path for ordinary installs)."""
    return importlib.resources.files("dysonian_pl") / "pretrained"


def pretrained_name(geometry: str = "plate") -> str:
    if geometry not in GEOMETRIES:
        allowed = ", ".join(GEOMETRIES)
        raise ValueError(f"geometry: must be one of {allowed} (got {geometry!r})")
    return f"universal-{geometry}.ckpt"


def default_checkpoint(geometry: str = "plate") -> str | None:
    """Path of the shipped window-agnostic model for `geometry`, or None if not installed."""
    path = _pretrained_dir() / pretrained_name(geometry)
    return os.fspath(path) if path.is_file() else None


def default_ensemble(geometry: str = "plate") -> str | None:
    """Path of the shipped ensemble manifest for `geometry` (`ensemble`), or None."""
    path = _pretrained_dir() / pretrained_name(geometry).replace(".ckpt", ".ensemble.json")
    return os.fspath(path) if path.is_file() else None


def default_npz(geometry: str = "plate") -> str | None:
    """Path of the numpy export of the shipped model (`npnet`), or None if not installed."""
    path = _pretrained_dir() / pretrained_name(geometry).replace(".ckpt", ".npz")
    return os.fspath(path) if path.is_file() else None


def load_pretrained(geometry: str = "plate", *, say=None) -> Predictor | NumpyPredictor | None:
    """The shipped model for `geometry`: the shipped ensemble (`ensemble`) when its
    manifest is installed, else the one shipped model. Each model is read from its
    numpy export if that was made from its checkpoint (sha256 recorded in the .npz),
    else from the checkpoint with torch; None if nothing is installed.

    `say(message)` receives a line when a .npz is stale or unreadable and the
    checkpoint is used instead (default: stderr).
    """
    say = say or (lambda m: print(m, file=sys.stderr))
    manifest = default_ensemble(geometry)
    if manifest is not None:
        from .ensemble import load_ensemble

        return load_ensemble(manifest, say=say)
    ckpt, npz = default_checkpoint(geometry), default_npz(geometry)
    if npz is not None:
        try:
            model = load_model(npz)
        except CheckpointError as e:
            if ckpt is None:
                raise
            say(f"warning: {e}; using {Path(ckpt).name} with torch (slower start)")
        else:
            if ckpt is None or sha256_of(ckpt) == model.source_sha256:
                return model
            say(
                f"warning: {Path(npz).name} was not made from the installed "
                f"{Path(ckpt).name} (sha256 differs); using the .ckpt with torch (slower "
                f"start); rewrite it with: python scripts/export_pretrained.py --npz-only {ckpt}"
            )
    return load_model(ckpt) if ckpt is not None else None


def to_physical(
    model: Predictor | Any,
    values: np.ndarray,
    sigmas: np.ndarray | None,
    sweep: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions of a window-agnostic model, nominal window -> the file's sweep (G).

    `model`: a model or its `SimulationConfig`. With ``sim.relative_window`` the
    nominal window [w0, w1] stands for the measured sweep [lo, hi]:
    ``B0 = lo + (B0n - w0) k``, ``dB = dBn k`` with ``k = (hi - lo) / (w1 - w0)``; the
    third parameter (p) is unchanged; sigmas of B0 and dB scale by ``k``. For a
    fixed-window model (or ``sweep`` None) the arrays come back unchanged (copies).
    `values` and `sigmas` are (..., 3).
    """
    sim = getattr(model, "sim", model)
    values = np.array(values, dtype=np.float64)
    sigmas = None if sigmas is None else np.array(sigmas, dtype=np.float64)
    if not getattr(sim, "relative_window", False) or sweep is None:
        return values, sigmas
    w0, w1 = (float(v) for v in sim.window)
    lo, hi = (float(v) for v in sweep)
    k = (hi - lo) / (w1 - w0)
    values[..., 0] = lo + (values[..., 0] - w0) * k
    values[..., 1] = values[..., 1] * k
    if sigmas is not None:
        sigmas[..., 0] *= k
        sigmas[..., 1] *= k
    return values, sigmas


def predict_zoomed(
    model: Predictor | NumpyPredictor,
    field: np.ndarray,
    spectra: np.ndarray,
    *,
    rounds: int = ZOOM_ROUNDS,
    calibrated: bool = True,
    rules: tuple[tuple[tuple[float, float], ...], ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window-agnostic model's predictions with `infer`'s zoom rules, for spectra that
    share one field axis (e.g. simulated ones): (values, sigmas, windows), physical units.
    `calibrated`, `rules`: as `read_zoomed`.

    `spectra` (N, len(field)) are first read on the whole sweep as given (they must be
    prepared: normalised); a narrow line is then read again, up to `rounds` times, on a
    window around it (`zoom_window`), prepared by `prepare_real` as a file would be.
    `windows` (N, n_outputs, 2) are the windows each parameter was finally read on.
    """
    field = np.asarray(field, dtype=np.float64)
    spectra = np.asarray(spectra)
    sweep = (float(field[0]), float(field[-1]))
    n = len(spectra)
    values, sigmas, windows, _, _ = read_zoomed(
        model,
        spectra,
        [sweep] * n,
        lambda k, axis: prepare_real(field, spectra[k], axis),
        rounds=rounds,
        calibrated=calibrated,
        rules=rules,
    )
    return values, sigmas, windows


def zoomed_flags(windows: np.ndarray, sweep_width: float) -> np.ndarray:
    """Which readings were on a zoomed window: `windows` (..., 2) narrower than the
    sweep (to 0.1 %), e.g. (N, n_outputs) from `predict_zoomed`'s windows."""
    windows = np.asarray(windows, dtype=np.float64)
    return windows[..., 1] - windows[..., 0] < 0.999 * sweep_width


def _zoom_chain(model, values, sigmas, sweeps, prepare, rule, rounds) -> tuple:
    """One chain of readings (`zoom_window` with `rule` = (below, target)) from the
    whole-sweep readings `values`, `sigmas` (copied): (values, sigmas, windows (N, 2),
    {k: (prepared, axis)} of the spectra read on a zoomed window)."""
    values, sigmas = values.copy(), sigmas.copy()
    windows = np.array(sweeps, dtype=np.float64).reshape(len(values), 2)
    zoomed: dict[int, tuple[Any, np.ndarray]] = {}
    todo = list(range(len(values)))
    for _ in range(rounds):
        again, spectra = [], []
        for k in todo:
            new = zoom_window(values[k, 0], values[k, 1], sweeps[k], tuple(windows[k]), *rule)
            if new is None:
                continue
            axis = np.linspace(new[0], new[1], model.sim.n_points)
            try:
                prep = prepare(k, axis)
            except ValueError:
                continue  # keep the wider window's answer
            zoomed[k] = (prep, axis)
            windows[k] = new
            again.append(k)
            spectra.append(prep.spectrum)
        if not again:
            break
        v, sg = predict_arrays(model, np.stack(spectra), return_sigma=True)
        for j, k in enumerate(again):
            values[k], sigmas[k] = to_physical(model, v[j], sg[j], tuple(windows[k]))
        todo = again
    return values, sigmas, windows, zoomed


def read_zoomed(
    model: Predictor | NumpyPredictor,
    first: np.ndarray,
    sweeps: list[tuple[float, float]],
    prepare,
    *,
    rounds: int = ZOOM_ROUNDS,
    calibrated: bool = True,
    rules: tuple[tuple[tuple[float, float], ...], ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, tuple[Any, np.ndarray]], np.ndarray]:
    """The zoom rules, batched: the one loop behind `infer_files` and `predict_zoomed`.

    `first` (N, n_points): the spectra prepared on their first windows, which are the
    `sweeps` (for a fixed-window model, only used to map nothing: see `to_physical`).
    All are read once in one `predict_arrays` call. For a window-agnostic model each
    parameter is then read on its own chains of readings (`rules`: per output, a tuple
    of (below, target) rules, default READ_RULES; outputs beyond it use the main rule
    (ZOOM_BELOW, ZOOM_TARGET)): in a chain, a line narrow in the window read
    (`zoom_window`) is prepared again by ``prepare(k, axis)`` on ``n_points`` over a
    window around it and read again, at most `rounds` times, every round in one
    `predict_arrays` call; a `ValueError` from `prepare` keeps the wider window's
    answer. Each distinct rule is one chain, shared by the parameters that use it. A
    parameter's value is the mean of its chains' final readings and its sigma the
    mixture's (mean variance plus the variance of those readings).
    Returns (values, sigmas) (N, n_outputs) in physical units, the windows
    (N, n_outputs, 2) of each parameter's first chain's final reading, and
    {k: (prepared, axis)} for the spectra whose *main* reading (the main rule: the
    window `infer` reports, overlays and checks the reconstruction on) was on a zoomed
    window, and (N, n_outputs) flags: which sigmas lie beyond those the calibration was
    fitted on (`calibration.beyond_range`: kept at the network's own, not shrunk).

    The sigmas are multiplied by the checkpoint's ``sigma_calibration`` table, if it has
    one (`calibration.apply_calibration`: a factor log-linear in the line's position in
    the window each parameter was read on, its relative width and p / p_fold,
    fitted by ``python -m dysonian_pl calibrate`` on spectra read this way), after B0,
    dB and p are corrected for the mean error the table found there
    (`calibration.apply_bias`),
    unless `calibrated` is False.
    """
    n = len(first)
    n_out = len(model.names)
    values = np.full((n, n_out), np.nan)
    sigmas = np.full((n, n_out), np.nan)
    sweep_arr = np.array(sweeps, dtype=np.float64).reshape(n, 2)
    windows = np.repeat(sweep_arr[:, None, :], n_out, axis=1)
    if n == 0:
        return values, sigmas, windows, {}, np.zeros((0, n_out), dtype=bool)
    v, sg = predict_arrays(model, first, return_sigma=True)
    for k in range(n):
        values[k], sigmas[k] = to_physical(model, v[k], sg[k], tuple(sweep_arr[k]))
    was_zoomed = np.zeros((n, n_out), dtype=bool)
    main = (ZOOM_BELOW, ZOOM_TARGET)
    zoomed: dict[int, tuple[Any, np.ndarray]] = {}
    if getattr(model.sim, "relative_window", False) and rounds > 0:
        rules = tuple(READ_RULES if rules is None else rules)
        per_param = [tuple(rules[j]) if j < len(rules) else (main,) for j in range(n_out)]
        wanted = [main] + [rule for chain in per_param for rule in chain]
        chains = {
            rule: _zoom_chain(model, values, sigmas, sweeps, prepare, rule, rounds)
            for rule in dict.fromkeys(wanted)
        }
        for j, chain in enumerate(per_param):
            v_j = np.stack([chains[rule][0][:, j] for rule in chain])  # (rules, N)
            s_j = np.stack([chains[rule][1][:, j] for rule in chain])
            values[:, j] = v_j.mean(axis=0)
            sigmas[:, j] = np.sqrt((s_j**2).mean(axis=0) + v_j.var(axis=0))
            windows[:, j] = chains[chain[0]][2]
            was_zoomed[list(chains[chain[0]][3]), j] = True
        zoomed = chains[main][3]
    table = _calibration_table(model)
    beyond = np.zeros((n, n_out), dtype=bool)
    if calibrated and table and np.isfinite(sigmas).all():
        beyond = beyond_range(table, sigmas, windows)
        values = apply_bias(table, values, windows, was_zoomed)
        sigmas = apply_calibration(table, values, sigmas, windows, was_zoomed)
    return values, sigmas, windows, zoomed, beyond


# --------------------------------------------------------------------------- #
# checkpoints
# --------------------------------------------------------------------------- #
_MODEL_CACHE: dict[tuple, Predictor] = {}


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return True
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict:
    """The checkpoint dictionary, validated as a dysonian_pl checkpoint this code can read."""
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {name}: file is empty (0 bytes)")
    try:
        torch_file = _looks_like_torch_file(p)
    except OSError as e:
        raise CheckpointError(f"checkpoint {name}: cannot read it ({e.strerror or e})") from None
    if not torch_file:
        raise CheckpointError(
            f"checkpoint {name}: not a PyTorch checkpoint file (expected a .ckpt written by "
            "dysonian_pl training)"
        )
    import torch

    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            msg = " ".join(str(e).split())[:200]
            raise CheckpointError(f"checkpoint {name}: not a readable torch file ({msg})") from None
        if not trust:
            detail = " ".join(str(e).split("WeightsUnpickler error:")[-1].split())
            detail = detail.split(" was not an allowed global")[0].split(". ")[0][:160]
            raise CheckpointError(
                f"checkpoint {name}: holds non-plain Python objects ({detail}); refusing to "
                "unpickle it: pass trust=True (--trust) only for a file you trust"
            ) from None
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001 - any failure here is an unreadable file
            msg = " ".join(str(e2).split())[:200] or type(e2).__name__
            raise CheckpointError(f"checkpoint {name}: not a readable torch file ({msg})") from None
    except Exception as e:  # noqa: BLE001 - corrupt archives raise many types
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"checkpoint {name}: not a readable torch file ({msg})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("dysonian_pl"), dict):
        raise CheckpointError(
            f"checkpoint {name}: not a dysonian_pl checkpoint (no 'dysonian_pl' section)"
        )
    meta = ckpt["dysonian_pl"]
    fmt = meta.get("format", 0)
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {name}: format {fmt!r} is newer than this dysonian_pl ({__version__}, "
            f"reads format <= {CHECKPOINT_FORMAT}); upgrade dysonian_pl"
        )
    for key in ("hyper_parameters", "state_dict"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"checkpoint {name}: no '{key}' section; the file is incomplete")
    return ckpt


def load_model(ckpt_path: str | os.PathLike, *, trust: bool = False) -> Predictor | NumpyPredictor:
    """A `predictor.Predictor` in eval mode on the CPU, cached per file within the process.

    It predicts exactly what the checkpoint's `module.DysonianRegressor` predicts
    (`predict_physical`, `predict_with_sigma`), without importing Lightning. The cache
    key includes the file's size and modification time, so a rewritten checkpoint is
    read again. `model.checkpoint_meta` holds the checkpoint's ``dysonian_pl`` section
    plus its resolved path.

    A path ending in ``.npz`` (the numpy export of a fast model, `npnet`) gives a
    `npnet.NumpyPredictor` instead, without importing torch; one ending in ``.json`` an
    `ensemble.Ensemble` (its members read as `ensemble.load_ensemble` says).
    """
    p = Path(ckpt_path).expanduser()
    try:
        st = p.stat()
        key: tuple = (str(p.resolve()), st.st_mtime_ns, st.st_size, bool(trust))
    except OSError:
        key = ()
    if key and key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    if p.suffix.lower() == ".json":
        from .ensemble import load_ensemble

        model = load_ensemble(p)
        if key:
            _MODEL_CACHE[key] = model
        return model
    if p.suffix.lower() == ".npz":
        try:
            model = load_npz(p)
        except ModelFileError as e:
            raise CheckpointError(str(e)) from None
        if key:
            _MODEL_CACHE[key] = model
        return model
    from .predictor import Predictor  # imports torch

    ckpt = read_checkpoint(p, trust=trust)
    try:
        model = Predictor.from_checkpoint(ckpt)
    except Exception as e:  # noqa: BLE001 - config or tensor-shape mismatches
        msg = " ".join(str(e).split())[:240]
        raise CheckpointError(f"checkpoint {p.name}: cannot rebuild the model ({msg})") from None
    model.checkpoint_meta = {**ckpt["dysonian_pl"], "path": str(p.resolve())}
    if key:
        _MODEL_CACHE[key] = model
    return model


# --------------------------------------------------------------------------- #
# prediction
# --------------------------------------------------------------------------- #
def predict_arrays(
    model: Predictor | NumpyPredictor,
    spectra: np.ndarray,
    *,
    batch: int = BATCH,
    threads: int | None = None,
    return_sigma: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Normalised spectra (N, n_points) -> (N, 3) predictions in physical units (float64).

    With ``return_sigma`` a pair (values, sigmas), both (N, 3) float64: the calibrated
    standard deviations of a model trained with ``uncertainty``, NaN otherwise. The
    units are those of the model's window (nominal for a window-agnostic model: see
    `to_physical`).

    The spectra must already be prepared (`preprocess.normalise` or `prepare_real`);
    no Lightning trainer is involved. `threads`: torch intra-op threads for this call
    (restored afterwards); by default one thread below `SMALL_BATCH` spectra, where
    thread start-up costs more than it saves (measured 10 ms on 1 thread vs 20-870 ms
    on 2 threads of a busy 2-core machine for one 512-point spectrum), and torch's
    setting otherwise. A `npnet.NumpyPredictor` runs in numpy (`threads` unused: numpy's
    BLAS keeps its own setting) and never imports torch.
    """
    x = np.asarray(spectra, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    n_points = model.sim.n_points
    if x.ndim != 2 or x.shape[1] != n_points:
        raise ValueError(
            f"spectra: expected shape (N, {n_points}) for this model (got {tuple(x.shape)})"
        )
    out = np.empty((x.shape[0], 3), dtype=np.float64)
    sig = np.full((x.shape[0], 3), np.nan, dtype=np.float64)
    with_sigma = return_sigma and bool(getattr(model, "uncertainty", False))
    if hasattr(model, "members"):  # an ensemble.Ensemble: the mixture of its members
        out, sig = model.predict(x, batch=batch, threads=threads)
        return (out, sig) if return_sigma else out
    if isinstance(model, NumpyPredictor):
        for a in range(0, x.shape[0], batch):
            if with_sigma:
                out[a : a + batch], sig[a : a + batch] = model.predict_with_sigma(x[a : a + batch])
            else:
                out[a : a + batch] = model.predict_physical(x[a : a + batch])
        return (out, sig) if return_sigma else out
    import torch

    if threads is None and x.shape[0] < SMALL_BATCH:
        threads = 1
    previous_threads = torch.get_num_threads()
    was_training = model.training
    if was_training:  # eval() walks every module: skipped when there is nothing to switch
        model.eval()
    try:
        if threads is not None and threads != previous_threads:
            torch.set_num_threads(max(int(threads), 1))
        with torch.inference_mode():
            for a in range(0, x.shape[0], batch):
                chunk = torch.from_numpy(np.ascontiguousarray(x[a : a + batch]))
                if with_sigma:
                    value, sigma = model.predict_with_sigma(chunk)
                    out[a : a + batch] = value.cpu().numpy()
                    sig[a : a + batch] = sigma.cpu().numpy()
                else:
                    out[a : a + batch] = model.predict_physical(chunk).cpu().numpy()
    finally:
        if was_training:
            model.train()
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    return (out, sig) if return_sigma else out


def model_line(model: Predictor, axis: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The model's line for (B0, dB, third) on `axis`, polarity rule applied, peak-to-peak 1."""
    B0, dB, third = (float(v) for v in params)
    dB = max(dB, 1e-9)
    if model.sim.wide:
        line = joshi(axis, B0, dB, max(third, 0.0))
    else:
        line = dysonian(axis, B0, dB, max(third, 1e-9), model.sim.geometry)
    return normalise(np.asarray(line, dtype=np.float64))


@dataclass
class _Fit:
    amplitude: float
    offset: float
    slope: float
    rms: float
    reconstructed_norm: np.ndarray  # on the model axis, in the normalised units of the input
    explained: float = math.nan  # fraction of the variance about a straight baseline


def _reconstruct(
    model: Predictor, axis: np.ndarray, prep, params: np.ndarray, covered: np.ndarray
) -> _Fit:
    """Amplitude and straight baseline of the predicted line, fitted to the measured data.

    The measured data on the model's axis in file units are
    ``sign * scale * spectrum + baseline`` (what `prepare_real` resampled, before it
    normalised); the line in the file's orientation is ``sign * t`` with ``t`` the
    normalised model line. Only points inside the measured sweep enter the fit.
    """
    sign = -1.0 if prep.flipped else 1.0
    t = model_line(model, axis, params)
    measured = sign * prep.scale * prep.spectrum.astype(np.float64) + prep.baseline
    centre = 0.5 * (axis[0] + axis[-1])
    design = np.stack([sign * t, np.ones_like(axis), axis - centre], axis=1)
    coef, *_ = np.linalg.lstsq(design[covered], measured[covered], rcond=None)
    fitted = design @ coef
    resid = (measured - fitted)[covered]
    rms = float(np.sqrt(np.mean(resid**2)) / prep.scale)
    recon_norm = (fitted - prep.baseline) * sign / prep.scale
    # how much of the signal (about a straight baseline alone) the line explains
    base, *_ = np.linalg.lstsq(design[covered, 1:], measured[covered], rcond=None)
    about_line = float(np.sum((measured[covered] - design[covered, 1:] @ base) ** 2))
    explained = 1.0 - float(np.sum(resid**2)) / about_line if about_line > 0 else math.nan
    return _Fit(float(coef[0]), float(coef[1]), float(coef[2]), rms, recon_norm, explained)


def format_pm(value: float, sigma: float | None = None) -> str:
    """``3399.52 ± 0.03``: the value to the sigma's first significant digit (two if it is 1).

    Without a finite positive sigma: the value to 4 significant digits.
    """
    value = float(value)
    if sigma is None or not (math.isfinite(sigma) and sigma > 0) or not math.isfinite(value):
        return f"{value:.4g}"
    exp = math.floor(math.log10(sigma))
    digits = -exp + (1 if f"{sigma:e}"[0] == "1" else 0)
    digits = min(max(digits, 0), 8)
    return f"{value:.{digits}f} ± {sigma:.{digits}f}"


def _fmt_value(name: str, v: float, sigma: float | None = None) -> str:
    unit = PARAMETERS[name].unit if name in PARAMETERS else ""
    return f"{name} = {format_pm(v, sigma)}" + (f" {unit}" if unit else "")


def _range_position(value: float, lo: float, hi: float, log: bool = False) -> str:
    """ "inside", "edge" (within EDGE_FRACTION of the span of an end) or "outside"."""
    if log and lo > 0 and hi > lo and value > 0:
        value, lo, hi = math.log(value), math.log(lo), math.log(hi)
    margin = EDGE_FRACTION * (hi - lo)
    if value < lo - margin or value > hi + margin:
        return "outside"
    if value <= lo + margin or value >= hi - margin:
        return "edge"
    return "inside"


def _pct(f: float) -> str:
    return f"{100 * f:.3g}"


def _relative_range_warnings(
    model: Predictor, params: np.ndarray, lo: float, hi: float
) -> list[str]:
    """Training-range warnings of a window-agnostic model, in fractions of the sweep.

    Comparing fractions of the sweep with the nominal ranges as fractions of the
    nominal window is the same as comparing nominal values with nominal ranges.
    """
    sim = model.sim
    w0, w1 = sim.window
    span_n = w1 - w0
    span = hi - lo
    out = []
    checks = [
        (
            "line centre is at",
            (float(params[0]) - lo) / span,
            ((sim.B0[0] - w0) / span_n, (sim.B0[1] - w0) / span_n),
            False,
            "centre the sweep on the line",
            "centre the sweep on the line",
        ),
        (
            "line width is",
            float(params[1]) / span,
            (sim.dB[0] / span_n, sim.dB[1] / span_n),
            sim.log_dB,
            "record a narrower sweep around the line",
            "record a wider sweep",
        ),
    ]
    for what, frac, (f_lo, f_hi), log, low_advice, high_advice in checks:
        where = _range_position(frac, f_lo, f_hi, log)
        if where == "inside":
            continue
        trained = f"{_pct(f_lo)}-{_pct(f_hi)} %"
        advice = low_advice if frac < 0.5 * (f_lo + f_hi) else high_advice
        if where == "outside":
            out.append(
                f"{what} {_pct(frac)} % of the sweep: the model was trained for {trained} "
                f"(outside: treat with caution, {advice})"
            )
        else:
            out.append(
                f"{what} {_pct(frac)} % of the sweep, at the edge of the {trained} the model "
                "was trained for: treat with caution"
            )
    return out


def twin_of(model: Predictor | NumpyPredictor, p: float) -> float:
    """The other p with exactly the line shape of `p` (`lineshapes.p_twin`) for the
    model's geometry; NaN where there is none, for a wide-line model (no p) and for a
    p that is not a positive number."""
    if "p" not in model.names or not (math.isfinite(p) and p > 0):
        return math.nan
    return float(p_twin(p, model.sim.geometry))


def twin_sigma(model: Predictor | NumpyPredictor, p: float, s_p: float, twin: float) -> float:
    """The standard deviation of the twin p, propagated from `s_p` through A/D:
    s_p |dR/dp (p)| / |dR/dp (twin)| with R = A/D (`lineshapes.ad_ratio`); NaN without a
    twin or a finite sigma."""
    if not (math.isfinite(twin) and math.isfinite(s_p)):
        return math.nan
    geometry = model.sim.geometry

    def slope(q: float) -> float:
        h = 1e-5 * q
        return float(ad_ratio(q + h, geometry) - ad_ratio(q - h, geometry)) / (2 * h)

    return abs(s_p * slope(p) / slope(twin))


def _p_twin_warning(model: Predictor | NumpyPredictor, p: float, s_p: float) -> str | None:
    """The identifiability warning for p.

    With a twin (`lineshapes.p_twin`): always, naming both and which side of the fold
    of A/D (`lineshapes.p_fold`) the model's answer assumes, since the shape alone
    cannot tell them apart. A model trained on one side of the fold (the shipped ones)
    answers on that side; one trained across it may blend the two (then p ± 2 sigma
    reaches the fold). Without a twin: a plain warning when p ± 2 sigma reaches the fold
    or sigma is above `P_SIGMA_FRACTION` of the training span; else None. Needs a
    finite sigma (a model with ``uncertainty``).
    """
    if not (math.isfinite(p) and math.isfinite(s_p)):
        return None
    geometry = model.sim.geometry
    fold = p_fold(geometry)
    p_lo, p_hi = model.sim.ranges()["p"]
    large = s_p > P_SIGMA_FRACTION * (p_hi - p_lo)
    reaches = p - 2 * s_p <= fold <= p + 2 * s_p
    twin = twin_of(model, p)
    if math.isfinite(twin):
        s_twin = twin_sigma(model, p, s_p, twin)
        side = "below" if p < fold else "beyond"
        if p_hi <= fold or p_lo >= fold:
            assumes = (
                f"this model was trained on p {p_lo:g}-{p_hi:g}, {side} the fold at "
                f"p = {fold:.4g}, and answers on that side: take p = {twin:.3g} if the "
                f"sample can be {'thicker' if side == 'below' else 'thinner'} than that"
            )
        else:
            assumes = (
                f"p ± 2 sigma = {p - 2 * s_p:.3g} to {p + 2 * s_p:.3g}, the fold where A/D "
                f"is smallest is at p = {fold:.4g}"
            )
        return (
            f"p = {p:.3g} ± {s_p:.2g} and p = {twin:.3g} ± {s_twin:.2g} give the same line "
            f"shape ({geometry}): the shape alone cannot tell them apart ({assumes})"
        )
    if reaches:
        return (
            f"p = {p:.3g} ± {s_p:.2g}: p ± 2 sigma ({p - 2 * s_p:.3g} to {p + 2 * s_p:.3g}) "
            f"reaches the fold at p = {fold:.4g} ({geometry}) "
            "beyond which lines repeat the shapes of smaller p: the shape alone cannot tell "
            "them apart"
        )
    if large:
        return f"p is poorly determined by the line shape here (p = {p:.3g} ± {s_p:.2g})"
    return None


def _calibration_table(model) -> dict | None:
    """The model's ``sigma_calibration`` table (`calibration`), or None."""
    return (getattr(model, "checkpoint_meta", None) or {}).get("sigma_calibration")


def _sampling_warning(
    model: Predictor, params: np.ndarray, n_points: int, sweep: tuple[float, float]
) -> str | None:
    """A window-agnostic model's warning for a line recorded with fewer points across its
    width (dB over the file's field step) than any simulated line it was trained and
    calibrated on (`sim.n_points` points over the nominal window, dB from its lower
    end: 41 for the shipped models); None otherwise. Such a line is resampled onto
    the network's axis by a cubic (`preprocess.cubic_resample`): clean simulated lines
    recorded at 6-12 points per width are then read within about half a calibrated
    sigma of the same lines at 100, but the sigmas were calibrated on none of them, and
    noise resampled this way is not the noise they were calibrated with. (The two 0.12 G
    lines of shared/ recorded at 12 points per width, LiLiF-X and EMX-winEPR, have B0
    7-8 of its sigmas from least squares; that is not the sampling: the network reads
    clean lines sampled at those files' fields to within 0.0002 G of their B0 on
    average, at most half the sigma. Least squares puts p at its bound of 0 there, the
    network 0.47 and 0.64.)"""
    sim = model.sim
    if not getattr(sim, "relative_window", False) or n_points < 2:
        return None
    width = float(sweep[1]) - float(sweep[0])
    d_b = float(params[1])
    if not (width > 0 and np.isfinite(d_b) and d_b > 0):
        return None
    across = d_b * (n_points - 1) / width
    least = sim.dB[0] * (sim.n_points - 1) / (sim.window[1] - sim.window[0])
    if across >= least:
        return None
    return (
        f"the line is {across:.3g} recorded points wide (dB over the field step), fewer "
        f"than the {least:.3g} or more of every simulated line this model was trained and "
        "calibrated on: its sigmas were not calibrated for lines sampled this coarsely "
        "(record more points across the line, or a narrower sweep)"
    )


def _warnings_for(
    model: Predictor,
    params: np.ndarray,
    prep,
    axis: np.ndarray,
    name: str,
    sweep: tuple[float, float] | None = None,
    sigmas: np.ndarray | None = None,
) -> list[str]:
    """Warnings for one spectrum; `params` (and `sigmas`) in physical units on `axis`.

    For a window-agnostic model `axis` is the file's sweep and the training ranges
    are checked as fractions of it.
    """
    # the file name is a column of its own: drop prepare_real's "name: " prefix
    out = [w[len(name) + 2 :] if w.startswith(name + ": ") else w for w in prep.warnings]
    names = model.names
    relative = bool(getattr(model.sim, "relative_window", False))
    B0, dB = float(params[0]), float(params[1])
    lo, hi = float(axis[0]), float(axis[-1])
    window = "the model's window"
    if relative:
        zoomed = sweep is not None and (hi - lo) < 0.999 * (sweep[1] - sweep[0])
        window = "the window read (zoomed around the line)" if zoomed else "the measured sweep"
    if not lo <= B0 <= hi:
        out.append(
            f"line lies at/outside the window: B0 = {B0:.2f} G is outside {window} "
            f"{lo:.2f}-{hi:.2f} G"
        )
    elif min(B0 - lo, hi - B0) < dB:
        out.append(
            f"line lies at/outside the window: B0 = {B0:.2f} G is closer than dB = {dB:.2f} G "
            f"to an edge of {window} {lo:.2f}-{hi:.2f} G"
        )
    if not relative and sweep is not None and not sweep[0] <= B0 <= sweep[1]:
        out.append(
            f"B0 = {B0:.2f} G lies outside the measured sweep {sweep[0]:.2f}-{sweep[1]:.2f} G: "
            "the prediction and the reconstruction are unreliable"
        )
    if relative:
        out += _relative_range_warnings(model, params, lo, hi)
    ranges = model.sim.ranges()
    for i, (pname, value) in enumerate(zip(names, params, strict=True)):
        if relative and i < 2:
            continue  # B0 and dB: in fractions of the sweep above
        r_lo, r_hi = ranges[pname]
        rng = f"[{r_lo:g}, {r_hi:g}]"
        log = pname == "dB" and bool(getattr(model.sim, "log_dB", False))
        where = _range_position(float(value), r_lo, r_hi, log)
        if pname == "p" and value <= 0:
            out.append(
                f"{_fmt_value(pname, value)} is not physical (p > 0): the line's asymmetry is "
                "the opposite of a skin-effect line's (a phase error, or not a Dysonian line)"
            )
        elif where == "outside":
            out.append(
                f"{_fmt_value(pname, value)} is outside the training range {rng}: treat with caution"
            )
        elif where == "edge":
            out.append(
                f"{_fmt_value(pname, value)} is at the edge of the training range {rng}: "
                "treat with caution"
            )
    if sigmas is not None and "p" in names:
        warning = _p_twin_warning(
            model, float(params[names.index("p")]), float(sigmas[names.index("p")])
        )
        if warning:
            out.append(warning)
    if prep.flipped:
        out.append(
            "polarity flipped: the first extremum is a minimum (reversed sweep or a phase "
            "error), so the spectrum was negated before prediction"
        )
    return out


# --------------------------------------------------------------------------- #
# inputs and outputs
# --------------------------------------------------------------------------- #
def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def expand_inputs(
    paths: list[str | os.PathLike] | str | os.PathLike,
) -> list[tuple[str, str | None]]:
    """(input as shown, path or None) per spectrum to read; None with a pattern that matched nothing.

    Existing files are used as given. Glob patterns (``**`` recursive) and folders (every
    spectrum file in it and its sub-folders) keep only spectrum files and read each
    BES3T/ESP pair once (``x.DSC`` + ``x.DTA`` -> ``x.DSC``). Duplicates are dropped.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(shown: str, path: str) -> None:
        root, ext = os.path.splitext(os.path.abspath(path))
        ext = ext.lower()
        key = os.path.normcase(root).lower() + _COMPANION_OF.get(ext, ext)  # a pair once
        if key not in seen:
            seen.add(key)
            out.append((shown, path))

    for item in paths:
        s = os.fspath(item)
        folder = os.path.isdir(s)
        if not folder and (os.path.exists(s) or not _has_magic(s)):
            add(s, s)
            continue
        pattern = os.path.join(glob.escape(s), "**", "*") if folder else s
        matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
        matches = [m for m in matches if looks_like_spectrum(m)]
        lower = {os.path.normcase(m).lower() for m in matches}
        kept = []
        for m in matches:
            root, ext = os.path.splitext(m)
            desc = _COMPANION_OF.get(ext.lower())
            if desc and os.path.normcase(root + desc).lower() in lower:
                continue  # its descriptor is in the list; read the pair once
            kept.append(m)
        if not kept:
            out.append((s, None))
        for m in kept:
            add(m, m)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (same-folder temporary file, fsync, os.replace)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def _plot_names(stems: list[str], ext: str = "svg") -> list[str]:
    """Unique (case-insensitively) plot file names from stems: a, a-2, a-3, ... + .ext"""
    used: set[str] = {"predictions"}
    names = []
    for stem in stems:
        stem = stem or "spectrum"
        cand, k = stem, 1
        while cand.lower() in used:
            k += 1
            cand = f"{stem}-{k}"
        used.add(cand.lower())
        names.append(f"{cand}.{ext}")
    return names


def _overlay_png(
    axis: np.ndarray,
    measured: np.ndarray,
    recon: np.ndarray,
    covered: np.ndarray,
    title: str,
) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    # a long title on two lines (about 80 characters of 8 px at 9 pt), centred on the
    # figure; a line still wider than the figure (a long name without spaces) gets a
    # smaller font rather than losing characters off the edge
    # (lines break only between the title's parts, "B0 = 3383.44 ± 0.09 G" stays whole)
    parts = [part.replace(" ", "\xa0") for part in title.split("  ")]
    title = textwrap.fill(" ".join(parts), 80).replace("\xa0", " ")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.93 - 0.03 * title.count("\n"), bottom=0.1)
    m = np.where(covered, measured, np.nan)
    top.plot(axis, m, lw=1.0, color="0.2", label="measured (resampled, normalised)")
    top.plot(axis, recon, lw=1.2, color="C3", label="reconstructed")
    if not covered.all():
        for ax in (top, bottom):
            ax.fill_between(
                axis, 0, 1, where=~covered, color="0.9", transform=ax.get_xaxis_transform()
            )
    # y range from what was measured (and the reconstruction over it): a line predicted
    # outside the sweep must not flatten the data
    shown = np.concatenate([measured[covered], recon[covered]])
    shown = shown[np.isfinite(shown)]
    if shown.size:
        lo, hi = float(shown.min()), float(shown.max())
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        top.set_ylim(lo - pad, hi + pad)
    top.set_ylabel("normalised signal")
    top.legend(loc="best", fontsize=8, frameon=False)
    text = fig.suptitle(title, fontsize=9, y=0.995, va="top")
    room = 0.98 * fig.bbox.width
    width = text.get_window_extent(fig.canvas.get_renderer()).width
    if width > room:
        text.set_fontsize(9 * room / width)
    bottom.plot(axis, np.where(covered, measured - recon, np.nan), lw=0.8, color="C0")
    bottom.axhline(0.0, color="0.5", lw=0.6)
    bottom.set_xlabel("field (G)")
    bottom.set_ylabel("residual")
    fig.align_ylabels()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _model_info(model: Predictor) -> dict:
    meta = getattr(model, "checkpoint_meta", {}) or {}
    sim = model.sim
    relative = bool(getattr(sim, "relative_window", False))
    info = {
        "checkpoint": meta.get("path"),
        "engine": _engine(model),
        "checkpoint_format": meta.get("format"),
        "trained_with_dysonian_pl": meta.get("package_version"),
        "dysonian_pl_version": __version__,
        "window_g": None if relative else list(sim.window),
        "relative_window": relative,
        "n_points": sim.n_points,
        "geometry": sim.geometry,
        "target_names": list(model.names),
        "uncertainty": _has_sigma(model),
        "training_ranges": {k: list(v) for k, v in sim.ranges().items()},
    }
    if hasattr(model, "members"):  # an ensemble: its members and their checkpoints
        info["ensemble_members"] = meta.get("members")
    if isinstance(model, NumpyPredictor):  # the .npz export of a checkpoint: which one
        info["exported_from"] = meta.get("source_checkpoint")
        info["exported_from_sha256"] = meta.get("source_sha256")
    if relative:
        w0, w1 = sim.window
        span = w1 - w0
        info["window"] = "each file's own sweep (window-agnostic model)"
        info["nominal_window"] = list(sim.window)
        info["training_ranges_fraction_of_sweep"] = {
            "B0": [(sim.B0[0] - w0) / span, (sim.B0[1] - w0) / span],
            "dB": [sim.dB[0] / span, sim.dB[1] / span],
        }
    return info


def _engine(model) -> str:
    if hasattr(model, "members"):
        return model.engine
    return "numpy" if isinstance(model, NumpyPredictor) else "torch"


def _has_sigma(model: Predictor) -> bool:
    return bool(getattr(model, "uncertainty", False))


def _columns(model: Predictor, polish: bool) -> list[str]:
    cols = ["file", "path", "slice", "status", *model.names]
    if _has_sigma(model):
        cols += [f"{n}_sigma" for n in model.names]
    if "p" in model.names:
        cols += ["p_twin", "p_twin_sigma"] if _has_sigma(model) else ["p_twin"]
    if "B0" in model.names:
        cols += ["frequency_ghz", "g", "g_sigma"] if _has_sigma(model) else ["frequency_ghz", "g"]
    cols += ["amplitude", "baseline_offset", "baseline_slope", "rms_residual", "explained"]
    cols += ["flipped", "coverage", "sweep_lo", "sweep_hi", "window_lo", "window_hi", "zoom"]
    cols += ["B0_zoom"]
    cols += ["n_points_file", "plot"]
    if polish:
        for n in model.names:
            cols += [f"lsq_{n}", f"lsq_{n}_stderr"]
        cols += ["lsq_success"]
    cols += ["warnings", "reader_notes", "error"]
    return cols


def _write_csv(path: Path, rows: list[dict], cols: list[str], model: Predictor) -> None:
    buf = io.StringIO()
    info = _model_info(model)
    source = ""
    if info.get("ensemble_members"):
        source = (
            " (ensemble of "
            + ", ".join(
                f"{m.get('ckpt')} sha256 {str(m.get('sha256') or '')[:16]}... ({m.get('engine')})"
                for m in info["ensemble_members"]
            )
            + ")"
        )
    elif info["engine"] == "numpy":
        sha = str(info.get("exported_from_sha256") or "")[:16]
        source = f" (numpy export of {info.get('exported_from')}, sha256 {sha}...)"
    buf.write(f"# dysonian_pl {__version__} infer; checkpoint {info['checkpoint']}{source}\n")
    if info["relative_window"]:
        window = "each file's own sweep (window-agnostic model)"
    else:
        window = f"{info['window_g'][0]:g}-{info['window_g'][1]:g} G"
    buf.write(f"# model window {window}, {info['n_points']} points, geometry {info['geometry']}\n")
    for col in cols:
        if col in UNITS:
            buf.write(f"# {col}: {UNITS[col]}\n")
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(
            {
                k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                for k, v in row.items()
            }
        )
    _atomic_write(path, buf.getvalue().encode("utf-8"))


def _units(model: Predictor) -> dict[str, str]:
    out = {}
    for k, v in UNITS.items():
        base = k.removesuffix("_sigma").removesuffix("_twin")
        if base in ("alpha", "p") and base not in model.names:
            continue
        if k.endswith("_sigma") and not _has_sigma(model):
            continue
        out[k] = v
    return out


def _write_json(path: Path, rows: list[dict], model: Predictor) -> None:
    doc = {
        "model": _model_info(model),
        "units": _units(model),
        "rows": [{k: _nan_to_none(v) for k, v in row.items()} for row in rows],
    }
    text = json.dumps(doc, indent=2, allow_nan=False)
    _atomic_write(path, (text + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- #
# the pipeline
# --------------------------------------------------------------------------- #
def _polish(model: Predictor, spec, sign: float, params: np.ndarray) -> dict:
    """Least-squares refinement from the CNN's prediction (dysonian_pl.fitting, if present)."""
    names = model.names
    row: dict[str, Any] = {f"lsq_{n}": math.nan for n in names}
    row.update({f"lsq_{n}_stderr": math.nan for n in names})
    row["lsq_success"] = None
    if model.sim.wide:
        row["_warning"] = "polish skipped: least squares fits Dysonian (narrow) lines only"
        return row
    try:
        from .fitting import fit_best_of
    except ImportError as e:
        row["_warning"] = f"polish skipped: dysonian_pl.fitting is not available ({e})"
        return row
    field_g = np.asarray(spec.field, dtype=np.float64)
    intensity = np.asarray(spec.intensity, dtype=np.float64) * sign
    ok = np.isfinite(field_g) & np.isfinite(intensity)
    start = {n: float(v) for n, v in zip(names, params, strict=True)}
    try:
        # from the CNN's answer and from the data's extrema: the better fit is kept
        res = fit_best_of(field_g[ok], intensity[ok], [start, "data"], geometry=model.sim.geometry)
    except Exception as e:  # noqa: BLE001 - a failed polish is a warning, not a failed file
        row["_warning"] = f"least-squares polish failed: {' '.join(str(e).split())[:200]}"
        row["lsq_success"] = False
        return row
    fitted = dict(getattr(res, "params", {}) or {})
    errs = dict(getattr(res, "stderr", {}) or {})
    for n in names:
        v, e = fitted.get(n), errs.get(n)
        row[f"lsq_{n}"] = float(v) if v is not None else math.nan
        row[f"lsq_{n}_stderr"] = float(e) if e is not None else math.nan
    row["lsq_success"] = bool(getattr(res, "success", False))
    if not row["lsq_success"]:
        row["_warning"] = "least-squares polish did not converge"
    return row


def _say(message: str, bar) -> None:
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def infer_files(
    paths,
    ckpt: str | os.PathLike | Predictor,
    out_dir: str | os.PathLike = "infer_out",
    *,
    plots: bool = True,
    plot_format: str = "svg",
    polish: bool = False,
    progress: bool | None = None,
    trust: bool = False,
    quiet: bool = False,
    field_unit: str | None = None,
    slices: str = "first",
) -> list[dict]:
    """Predict (B0, dB, p) for every file; write CSV, JSON and overlay plots under `out_dir`.

    `paths` are files or glob patterns. A file that cannot be read or prepared gives a
    row with ``status == "error"`` and an ``error`` message; the others continue. A
    file read whose reconstruction one line of the model's kind does not explain
    (`RMS_WARN`, `EXPLAINED_WARN`: several lines, hyperfine structure, not a Dysonian
    line) gets ``status == "unreliable"``, its numbers kept but not to be trusted; the
    rest ``"ok"`` (with or without warnings). `field_unit` (G, mT or T) is the field
    unit of a file that names none (`readers.read_spectrum`); without it such a file is
    read in gauss with a warning. What the reader did beyond the plain case (a unit
    assumed, decimal commas, which column or slice) is in ``reader_notes``. Of a 2D file
    (a power, angle, temperature or time series) `slices` ``"first"`` reads the first
    slice, ``"all"`` every slice, one row each (``file`` "name [slice k]", ``slice`` k,
    plots "name-slicek").
    `ckpt` is a checkpoint path or an already loaded model (a `Predictor` from
    `load_model`, or a `module.DysonianRegressor`). `progress`: None shows a
    tqdm bar for more than one file when stderr is a terminal. Warnings go to stderr
    (unless `quiet`) and into each row's ``warnings`` (joined by "; ", which no warning
    contains). All prepared
    spectra go through the network in one `predict_arrays` call per zoom round
    (`read_zoomed`). `plot_format`: ``"svg"`` (drawn by `svgplot`, no matplotlib) or
    ``"png"`` (matplotlib); the ``plot`` column names each file's plot.
    """
    if plot_format not in PLOT_FORMATS:
        raise ValueError(
            f"plot_format: must be one of {', '.join(PLOT_FORMATS)} (got {plot_format!r})"
        )
    if slices not in SLICES:
        raise ValueError(f"slices: must be one of {', '.join(SLICES)} (got {slices!r})")
    model = load_model(ckpt, trust=trust) if isinstance(ckpt, (str, os.PathLike)) else ckpt
    if not hasattr(model, "checkpoint_meta"):
        model.checkpoint_meta = {"path": None, "format": CHECKPOINT_FORMAT}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_axis = field_axis(model.sim)
    relative = bool(getattr(model.sim, "relative_window", False))
    with_sigma = _has_sigma(model)
    names = model.names
    inputs = expand_inputs(paths)
    stems: list[str] = []  # one per row: the plot's file name stem

    show = progress if progress is not None else (len(inputs) > 1 and sys.stderr.isatty())
    bar = None
    if show and inputs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(inputs), unit="file", desc="infer", file=sys.stderr)

    def log(message: str) -> None:
        if not quiet:
            _say(message, bar)

    rows: list[dict] = []
    try:
        # 1. read and prepare every file (a window-agnostic model: on the file's own sweep)
        ready: list[tuple[int, Any, Any, np.ndarray, tuple[float, float]]] = []

        def fail(row: dict, e: Exception) -> None:
            row.update(status="error", error=" ".join(str(e).split()), warnings="")
            log(f"error: {row['error']}")
            if bar is not None:
                bar.update()

        def read_one(row: dict, spec, i: int) -> None:
            """Prepare one spectrum for the network (on its own sweep for a
            window-agnostic model) and queue it."""
            row["reader_notes"] = "; ".join(spec.notes)
            field_g = np.asarray(spec.field, dtype=np.float64)
            finite = np.isfinite(field_g) & np.isfinite(np.asarray(spec.intensity, float))
            sweep = (
                (float(field_g[finite].min()), float(field_g[finite].max()))
                if finite.any()
                else (math.nan, math.nan)
            )
            axis = model_axis
            if relative and finite.sum() >= 16:  # fewer: prepare_real says so
                if not sweep[1] > sweep[0]:
                    raise ValueError(
                        f"{Path(spec.path).name}: every point has the same field "
                        f"({sweep[0]:g} G); there is no sweep to read"
                    )
                axis = np.linspace(sweep[0], sweep[1], model.sim.n_points)
            prep = prepare_real(spec.field, spec.intensity, axis, name=Path(spec.path).name)
            ready.append((i, spec, prep, axis, sweep))

        for shown, path in inputs:
            base: dict[str, Any] = {"file": Path(shown).name, "path": shown, "status": "ok"}
            base.update({n: math.nan for n in names})
            try:
                if path is None:
                    raise SpectrumFileError(
                        f"{shown}: no spectrum file in this folder or its sub-folders ({SUPPORTED})"
                        if os.path.isdir(shown)
                        else f"{shown}: no file matches this pattern"
                    )
                if slices == "all":
                    specs = read_all_slices(path, field_unit=field_unit)
                else:
                    specs = [read_spectrum(path, field_unit=field_unit)]
            except (SpectrumFileError, ValueError, OSError) as e:
                rows.append(base)
                stems.append("")
                fail(base, e)
                continue
            n_slices = int(specs[0].metadata.get("n_slices", 1))
            if bar is not None and len(specs) > 1:
                bar.total += len(specs) - 1
                bar.refresh()
            for j, spec in enumerate(specs):
                row = dict(base)
                rows.append(row)
                stem = Path(path).stem
                if n_slices > 1:
                    index = int(spec.metadata.get("slice_index", j))
                    row["slice"] = index
                    if len(specs) > 1:
                        row["file"] = f"{base['file']} [slice {index}]"
                        stem = f"{stem}-slice{index}"
                stems.append(stem)
                try:
                    read_one(row, spec, len(rows) - 1)
                except (SpectrumFileError, ValueError, OSError) as e:
                    fail(row, e)
        plot_names = _plot_names(stems, plot_format) if plots else []

        # 2. batched forward passes (nominal units for a window-agnostic model), then,
        # for a window-agnostic model, narrow lines again on windows zoomed around them
        first = (
            np.stack([r[2].spectrum for r in ready])
            if ready
            else np.empty((0, model.sim.n_points), np.float32)
        )

        def prepare_again(k: int, new_axis: np.ndarray):
            spec = ready[k][1]
            return prepare_real(spec.field, spec.intensity, new_axis, name=Path(spec.path).name)

        params_all, sigma_all, windows, zoomed, beyond = read_zoomed(
            model, first, [r[4] for r in ready], prepare_again, rounds=ZOOM_ROUNDS
        )
        whole = {k: (ready[k][2], ready[k][3]) for k in zoomed}  # first readings
        for k, (i, _, _, _, sweep) in enumerate(ready):  # B0 is read on a window of its own
            rows[i]["B0_zoom"] = (sweep[1] - sweep[0]) / (windows[k, 0, 1] - windows[k, 0, 0])
        for k, (new_prep, new_axis) in zoomed.items():
            i, spec, _, _, sweep = ready[k]
            ready[k] = (i, spec, new_prep, new_axis, sweep)
            main_window = windows[k, -1]  # p's: the main reading (READ_RULES)
            rows[i]["zoom"] = (sweep[1] - sweep[0]) / (main_window[1] - main_window[0])

        # 3. to the file's units; reconstruct, warn, polish, plot
        for k, (i, spec, prep, axis, sweep) in enumerate(ready):
            row = rows[i]
            params, sigma = params_all[k], sigma_all[k]
            if bar is not None:
                bar.set_postfix_str(row["file"][-30:], refresh=False)
            sweep_lo, sweep_hi = sweep
            covered = (axis >= sweep_lo) & (axis <= sweep_hi)
            fit = _reconstruct(model, axis, prep, params, covered)
            # how well one line explains the file: on the whole sweep, also when it was
            # read zoomed (a zoom window around one line of a multiplet looks clean)
            check = fit
            if k in whole:
                w_prep, w_axis = whole[k]
                w_covered = (w_axis >= sweep_lo) & (w_axis <= sweep_hi)
                check = _reconstruct(model, w_axis, w_prep, params, w_covered)
            warns = _warnings_for(
                model,
                params,
                prep,
                axis,
                Path(spec.path).name,
                sweep,
                sigmas=sigma if with_sigma else None,
            )
            if spec.field_unit_assumed:
                warns.append(UNIT_ASSUMED.format(where=f" (sweep {sweep_lo:.6g}-{sweep_hi:.6g} G)"))
            coarse = _sampling_warning(model, params, spec.n_points, sweep)
            if coarse:
                warns.append(coarse)
            if with_sigma and _calibration_table(model) and "p" in names:
                geometry = model.sim.geometry
                if outside_answers(params[None, :3], geometry)[0]:
                    fold = p_fold(geometry)
                    warns.append(
                        f"p = {float(params[names.index('p')]):.3g} lies outside the p the "
                        f"network gave on the simulated lines its sigmas were calibrated on "
                        f"({R_RANGE[0] * fold:.3g}-{R_RANGE[1] * fold:.3g}, {geometry}): every "
                        "sigma is kept at least the network's own"
                    )
            unsure = [n for n, b in zip(names, beyond[k], strict=True) if b]
            if unsure:
                warns.append(
                    f"the network is less sure of {', '.join(unsure)} on this line than on "
                    "99.9 % of the simulated lines its sigmas were calibrated on: the line is "
                    "not like them (several lines, a shape that is not one Dysonian, "
                    "distortion), and its sigma there is not made smaller than the "
                    "network's own"
                )
            if check.rms > RMS_WARN or check.explained < EXPLAINED_WARN:
                row["status"] = "unreliable"
                warns.append(
                    f"the reconstructed line leaves an rms residual of {_pct(check.rms)} % of "
                    f"the peak-to-peak and explains {_pct(max(check.explained, 0.0))} % of the "
                    "signal: the spectrum is not one line of this model's kind (several "
                    "lines, hyperfine structure, distortion) or lies outside its ranges: do not "
                    "trust these numbers"
                )
            row.update({n: float(v) for n, v in zip(names, params, strict=True)})
            if "p" in names:
                row["p_twin"] = twin_of(model, row["p"])
            if with_sigma:
                row.update({f"{n}_sigma": float(v) for n, v in zip(names, sigma, strict=True)})
                if "p" in names:
                    row["p_twin_sigma"] = twin_sigma(model, row["p"], row["p_sigma"], row["p_twin"])
            freq = spec.frequency_ghz
            if "B0" in names and freq is not None and math.isfinite(freq) and freq > 0:
                row["frequency_ghz"] = float(freq)
                if row["B0"] > 0:
                    row["g"] = float(g_factor(freq, row["B0"]))
                    if with_sigma:
                        row["g_sigma"] = row["g"] * row["B0_sigma"] / row["B0"]
            row.update(
                amplitude=fit.amplitude,
                baseline_offset=fit.offset,
                baseline_slope=fit.slope,
                rms_residual=check.rms,
                explained=check.explained,
                flipped=bool(prep.flipped),
                coverage=float(prep.coverage),
                sweep_lo=sweep_lo,
                sweep_hi=sweep_hi,
                window_lo=float(axis[0]),
                window_hi=float(axis[-1]),
                zoom=float(row.get("zoom", 1.0)),
                n_points_file=int(spec.n_points),
            )
            if polish:
                extra = _polish(model, spec, -1.0 if prep.flipped else 1.0, params)
                w = extra.pop("_warning", None)
                if w:
                    warns.append(w)
                row.update(extra)
            if plots:
                title = f"{row['file']}:  " + ",  ".join(
                    _fmt_value(n, float(v), float(e) if with_sigma else None)
                    for n, v, e in zip(names, params, sigma, strict=True)
                )
                shown = (axis, prep.spectrum, fit.reconstructed_norm, covered)
                if row["status"] == "unreliable":
                    title += "  (unreliable: not one line of this kind"
                    if k in whole:  # read zoomed: show the sweep one line fails to explain
                        shown = (w_axis, w_prep.spectrum, check.reconstructed_norm, w_covered)
                        title += "; the whole sweep shown"
                    title += ")"
                draw = _overlay_png if plot_format == "png" else overlay_svg
                image = draw(*shown, title)
                _atomic_write(out / plot_names[i], image)
                row["plot"] = plot_names[i]
            row["warnings"] = "; ".join(warns)
            row["error"] = ""
            for w in warns:
                log(f"warning: {row['file']}: {w}")
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()

    cols = _columns(model, polish)
    for row in rows:
        for c in cols:
            row.setdefault(c, "" if c in ("warnings", "reader_notes", "error", "plot") else None)
    _write_csv(out / "predictions.csv", rows, cols, model)
    _write_json(out / "predictions.json", rows, model)
    return rows


def markdown_table(rows: list[dict], names: tuple[str, ...] | list[str]) -> str:
    """The results as a Markdown table: file, parameters, status/warnings."""
    head = ["file", *(f"{n} ({PARAMETERS[n].unit})" if PARAMETERS[n].unit else n for n in names)]
    head += ["notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        if row.get("status") == "error":
            cells = [row["file"], *("-" for _ in names), f"error: {row.get('error', '')}"]
        else:
            cells = [row["file"], *(format_pm(row[n], row.get(f"{n}_sigma")) for n in names)]
            w = row.get("warnings") or ""
            n_w = len([x for x in w.split("; ") if x]) if w else 0
            note = f"{n_w} warning(s)" if n_w else "ok"
            cells.append(f"unreliable, {note}" if row.get("status") == "unreliable" else note)
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl infer",
        description=f"Read spectrometer files ({SUPPORTED}), "
        "predict B0, dB, p with a trained model, write predictions.csv/.json and overlay plots.",
        epilog="status column: ok; unreliable (read, but one line of the model's kind does "
        "not explain the spectrum: do not trust its numbers); error (not read). Exit status: "
        "0 when every file was read (ok or unreliable), 1 when some could not be read (the "
        "others still have their rows), 2 for a usage error.",
    )
    ap.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE_OR_GLOB",
        help="spectrum files, globs (quoted; ** recursive) or folders (every spectrum file "
        "in them and their sub-folders)",
    )
    ap.add_argument(
        "--ckpt",
        help="model checkpoint (.ckpt) written by dysonian_pl training, its numpy export "
        "(.npz, scripts/export_pretrained.py), or an ensemble manifest (.ensemble.json, "
        "python -m dysonian_pl ensemble) (default: the pretrained window-agnostic "
        "model shipped with the package, run in numpy)",
    )
    ap.add_argument(
        "--geometry",
        choices=GEOMETRIES,
        help="sample geometry: picks the pretrained model when --ckpt is not given "
        "(default plate); with --ckpt it must be the checkpoint's geometry",
    )
    ap.add_argument(
        "--field-unit",
        choices=FIELD_UNITS,
        help="the field unit of files that name none (a text export without a unit in its "
        "header, a CIQTEK file without one in xAxisName; also BES3T without XUNI, ESP "
        "without JUN; Adani files are in mT unless this says otherwise); without it they "
        "are read in gauss (text and CIQTEK files with a warning). A unit the file names "
        "always wins",
    )
    ap.add_argument(
        "--slices",
        choices=SLICES,
        default="first",
        help="of a 2D file (a power, angle, temperature or time series): read the first "
        "slice (default) or all, one row and one plot each",
    )
    ap.add_argument("--out", default="infer_out", help="output folder (default: infer_out)")
    ap.add_argument("--no-plots", action="store_true", help="do not write overlay plots")
    ap.add_argument(
        "--plot-format",
        choices=PLOT_FORMATS,
        default="svg",
        help="overlay plot format: svg (default, written without matplotlib) or png (matplotlib)",
    )
    ap.add_argument(
        "--polish",
        action="store_true",
        help="refine each prediction by a classical least-squares fit started from it",
    )
    ap.add_argument(
        "--progress", action="store_true", help="show a progress bar even if stderr is no TTY"
    )
    ap.add_argument(
        "--trust",
        action="store_true",
        help="allow a checkpoint that holds non-plain Python objects (unpickles it: trusted files only)",
    )
    ap.add_argument("--verbose", action="store_true", help="tracebacks and timings")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``python -m dysonian_pl infer``: exit 0 every file read, 1 some not read, 2 usage error."""
    ap = _parser()
    try:
        args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else 2
    geometry = args.geometry or "plate"
    t0 = time.perf_counter()
    try:
        model = load_model(args.ckpt, trust=args.trust) if args.ckpt else load_pretrained(geometry)
    except CheckpointError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    if model is None:
        print(
            "error: no checkpoint given: pass --ckpt (the pretrained "
            f"{geometry} model dysonian_pl/pretrained/{pretrained_name(geometry)} is not "
            "installed)",
            file=sys.stderr,
        )
        return 2
    if args.geometry and model.sim.geometry != args.geometry:
        print(
            f"error: --geometry {args.geometry}: the checkpoint {Path(args.ckpt).name} is a "
            f"{model.sim.geometry} model",
            file=sys.stderr,
        )
        return 2
    if args.verbose:
        engine = _engine(model)
        where = model.checkpoint_meta.get("path")
        print(
            f"model {where} ({engine}), loaded in {time.perf_counter() - t0:.2f} s", file=sys.stderr
        )
    try:
        rows = infer_files(
            args.inputs,
            model,
            args.out,
            plots=not args.no_plots,
            plot_format=args.plot_format,
            polish=args.polish,
            progress=True if args.progress else None,
            field_unit=args.field_unit,
            slices=args.slices,
        )
    except OSError as e:  # output folder not writable and the like
        if args.verbose:
            raise
        print(f"error: {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line unless --verbose
        if args.verbose:
            raise
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    print(markdown_table(rows, model.names))
    n_err = sum(r["status"] == "error" for r in rows)
    out = Path(args.out)
    print(
        f"\n{len(rows) - n_err} of {len(rows)} spectra read; results in "
        f"{out / 'predictions.csv'} and {out / 'predictions.json'}",
        file=sys.stderr,
    )
    if args.verbose:
        dt = time.perf_counter() - t0
        print(f"{dt:.2f} s in all, {dt / max(len(rows), 1):.3f} s per file", file=sys.stderr)
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
