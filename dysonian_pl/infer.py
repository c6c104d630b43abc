"""Inference on measured spectra: read files, predict (B0, dB, p), reconstruct, report.

``python -m dysonian_pl infer FILES_OR_GLOBS... --ckpt model.ckpt`` reads every file
(BES3T, ESP/WinEPR, text), prepares it exactly as training data are prepared
(`preprocess.prepare_real`: finite points, ascending field, median baseline,
resampling onto the model's axis, polarity rule, peak-to-peak 1), predicts the line
parameters with the CNN, and rebuilds the predicted line in the file's units by a
linear least-squares fit of amplitude and a straight baseline. It writes
``predictions.csv`` and ``predictions.json`` (atomically) and one overlay PNG per
spectrum, and prints a Markdown table.

Checkpoints are read with ``torch.load(weights_only=True)`` (no unpickling of
arbitrary objects); the model is rebuilt from the checkpoint's plain
``hyper_parameters`` and ``state_dict``. A checkpoint holding other objects is
refused unless ``trust=True`` (``--trust``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import pickle
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .atomic import atomic_open
from .lineshapes import dysonian, joshi
from .module import CHECKPOINT_FORMAT, DysonianRegressor
from .params import PARAMETERS
from .preprocess import normalise, prepare_real
from .readers import SpectrumFileError, read_spectrum
from .simulate import field_axis

__all__ = [
    "CheckpointError",
    "default_checkpoint",
    "load_model",
    "predict_arrays",
    "infer_files",
    "expand_inputs",
    "main",
]

#: Spectra per forward pass in `predict_arrays`.
BATCH = 1024
#: Below this many spectra `predict_arrays` runs on one thread unless told otherwise.
SMALL_BATCH = 64
#: A prediction this close to an end of its training range (fraction of the span) is flagged.
EDGE_FRACTION = 0.02

# pickle header of torch's legacy (non-zip) serialisation: protocol 2 + its magic number
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
# file extensions read_spectrum understands, and which of them are companions of another
_SPECTRUM_EXT = (".dsc", ".dta", ".par", ".spc", ".txt", ".csv", ".asc", ".dat")
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
    "rms_residual": "rms of (measured - reconstructed) over the covered window / measured peak-to-peak",
    "coverage": "fraction of the model's window covered by the measured sweep",
    "sweep_lo": "G",
    "sweep_hi": "G",
}


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, not ours or too new; one-line message."""


def default_checkpoint() -> str | None:
    """The shipped pretrained model, once there is one; None for now."""
    return None


# --------------------------------------------------------------------------- #
# checkpoints
# --------------------------------------------------------------------------- #
_MODEL_CACHE: dict[tuple, DysonianRegressor] = {}


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


def load_model(ckpt_path: str | os.PathLike, *, trust: bool = False) -> DysonianRegressor:
    """A `DysonianRegressor` in eval mode on the CPU, cached per file within the process.

    The cache key includes the file's size and modification time, so a rewritten
    checkpoint is read again. `model.checkpoint_meta` holds the checkpoint's
    ``dysonian_pl`` section plus its resolved path.
    """
    p = Path(ckpt_path).expanduser()
    try:
        st = p.stat()
        key: tuple = (str(p.resolve()), st.st_mtime_ns, st.st_size, bool(trust))
    except OSError:
        key = ()
    if key and key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    ckpt = read_checkpoint(p, trust=trust)
    try:
        model = DysonianRegressor(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # noqa: BLE001 - config or tensor-shape mismatches
        msg = " ".join(str(e).split())[:240]
        raise CheckpointError(f"checkpoint {p.name}: cannot rebuild the model ({msg})") from None
    model.eval()
    model.requires_grad_(False)
    model.checkpoint_meta = {**ckpt["dysonian_pl"], "path": str(p.resolve())}
    if key:
        _MODEL_CACHE[key] = model
    return model


# --------------------------------------------------------------------------- #
# prediction
# --------------------------------------------------------------------------- #
def predict_arrays(
    model: DysonianRegressor,
    spectra: np.ndarray,
    *,
    batch: int = BATCH,
    threads: int | None = None,
) -> np.ndarray:
    """Normalised spectra (N, n_points) -> (N, 3) predictions in physical units (float64).

    The spectra must already be prepared (`preprocess.normalise` or `prepare_real`);
    no Lightning trainer is involved. `threads`: torch intra-op threads for this call
    (restored afterwards); by default one thread below `SMALL_BATCH` spectra, where
    thread start-up costs more than it saves (measured 10 ms on 1 thread vs 20-870 ms
    on 2 threads of a busy 2-core machine for one 512-point spectrum), and torch's
    setting otherwise.
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
    if threads is None and x.shape[0] < SMALL_BATCH:
        threads = 1
    previous_threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    try:
        if threads is not None and threads != previous_threads:
            torch.set_num_threads(max(int(threads), 1))
        with torch.inference_mode():
            for a in range(0, x.shape[0], batch):
                chunk = torch.from_numpy(np.ascontiguousarray(x[a : a + batch]))
                out[a : a + batch] = model.predict_physical(chunk).cpu().numpy()
    finally:
        model.train(was_training)
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)
    return out


def model_line(model: DysonianRegressor, axis: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The model's line for (B0, dB, third) on `axis`, polarity rule applied, peak-to-peak 1."""
    B0, dB, third = (float(v) for v in params)
    dB = max(dB, 1e-9)
    if model.sim.wide:
        line = joshi(axis, B0, dB, max(third, 0.0))
    else:
        line = dysonian(axis, B0, dB, max(third, 1e-9), model.sim.geometry)
    t = torch.from_numpy(np.asarray(line, dtype=np.float64))[None]
    return normalise(t)[0].numpy()


@dataclass
class _Fit:
    amplitude: float
    offset: float
    slope: float
    rms: float
    reconstructed_norm: np.ndarray  # on the model axis, in the normalised units of the input


def _reconstruct(
    model: DysonianRegressor, axis: np.ndarray, prep, params: np.ndarray, covered: np.ndarray
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
    return _Fit(float(coef[0]), float(coef[1]), float(coef[2]), rms, recon_norm)


def _fmt_value(name: str, v: float) -> str:
    unit = PARAMETERS[name].unit if name in PARAMETERS else ""
    return f"{name} = {v:.4g}" + (f" {unit}" if unit else "")


def _warnings_for(
    model: DysonianRegressor,
    params: np.ndarray,
    prep,
    axis: np.ndarray,
    name: str,
    sweep: tuple[float, float] | None = None,
) -> list[str]:
    # the file name is a column of its own: drop prepare_real's "name: " prefix
    out = [w[len(name) + 2 :] if w.startswith(name + ": ") else w for w in prep.warnings]
    names = model.names
    B0, dB = float(params[0]), float(params[1])
    lo, hi = float(axis[0]), float(axis[-1])
    if not lo <= B0 <= hi:
        out.append(
            f"line lies at/outside the window: B0 = {B0:.2f} G is outside the model's window "
            f"{lo:.2f}-{hi:.2f} G"
        )
    elif min(B0 - lo, hi - B0) < dB:
        out.append(
            f"line lies at/outside the window: B0 = {B0:.2f} G is closer than dB = {dB:.2f} G "
            f"to an edge of the model's window {lo:.2f}-{hi:.2f} G"
        )
    if sweep is not None and not sweep[0] <= B0 <= sweep[1]:
        out.append(
            f"B0 = {B0:.2f} G lies outside the measured sweep {sweep[0]:.2f}-{sweep[1]:.2f} G: "
            "the prediction and the reconstruction are unreliable"
        )
    for name, value in zip(names, params, strict=True):
        r_lo, r_hi = model.sim.ranges()[name]
        margin = EDGE_FRACTION * (r_hi - r_lo)
        rng = f"[{r_lo:g}, {r_hi:g}]"
        if value < r_lo - margin or value > r_hi + margin:
            out.append(
                f"{_fmt_value(name, value)} is outside the training range {rng}: treat with caution"
            )
        elif value <= r_lo + margin or value >= r_hi - margin:
            out.append(
                f"{_fmt_value(name, value)} is at the edge of the training range {rng}: "
                "treat with caution"
            )
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

    Existing paths are used as given. Glob patterns (``**`` recursive) keep only
    spectrum files and read each BES3T/ESP pair once (``x.DSC`` + ``x.DTA`` -> ``x.DSC``).
    Duplicates are dropped.
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
        if os.path.exists(s) or not _has_magic(s):
            add(s, s)
            continue
        matches = sorted(m for m in glob.glob(s, recursive=True) if os.path.isfile(m))
        matches = [m for m in matches if os.path.splitext(m)[1].lower() in _SPECTRUM_EXT]
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


def _png_names(stems: list[str]) -> list[str]:
    """Unique (case-insensitively) PNG file names from stems: a, a-2, a-3, ..."""
    used: set[str] = {"predictions"}
    names = []
    for stem in stems:
        stem = stem or "spectrum"
        cand, k = stem, 1
        while cand.lower() in used:
            k += 1
            cand = f"{stem}-{k}"
        used.add(cand.lower())
        names.append(cand + ".png")
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
    fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.1)
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
    top.set_title(title, fontsize=9)
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


def _model_info(model: DysonianRegressor) -> dict:
    meta = getattr(model, "checkpoint_meta", {}) or {}
    sim = model.sim
    return {
        "checkpoint": meta.get("path"),
        "checkpoint_format": meta.get("format"),
        "trained_with_dysonian_pl": meta.get("package_version"),
        "dysonian_pl_version": __version__,
        "window_g": list(sim.window),
        "n_points": sim.n_points,
        "geometry": sim.geometry,
        "target_names": list(model.names),
        "training_ranges": {k: list(v) for k, v in sim.ranges().items()},
    }


def _columns(model: DysonianRegressor, polish: bool) -> list[str]:
    cols = ["file", "path", "status", *model.names]
    cols += ["amplitude", "baseline_offset", "baseline_slope", "rms_residual"]
    cols += ["flipped", "coverage", "sweep_lo", "sweep_hi", "n_points_file", "png"]
    if polish:
        for n in model.names:
            cols += [f"lsq_{n}", f"lsq_{n}_stderr"]
        cols += ["lsq_success"]
    cols += ["warnings", "error"]
    return cols


def _write_csv(path: Path, rows: list[dict], cols: list[str], model: DysonianRegressor) -> None:
    buf = io.StringIO()
    info = _model_info(model)
    buf.write(f"# dysonian_pl {__version__} infer; checkpoint {info['checkpoint']}\n")
    buf.write(
        f"# model window {info['window_g'][0]:g}-{info['window_g'][1]:g} G, "
        f"{info['n_points']} points, geometry {info['geometry']}\n"
    )
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


def _write_json(path: Path, rows: list[dict], model: DysonianRegressor) -> None:
    doc = {
        "model": _model_info(model),
        "units": {k: v for k, v in UNITS.items() if k not in ("alpha", "p") or k in model.names},
        "rows": [{k: _nan_to_none(v) for k, v in row.items()} for row in rows],
    }
    text = json.dumps(doc, indent=2, allow_nan=False)
    _atomic_write(path, (text + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- #
# the pipeline
# --------------------------------------------------------------------------- #
def _polish(model: DysonianRegressor, spec, sign: float, params: np.ndarray) -> dict:
    """Least-squares refinement from the CNN's prediction (dysonian_pl.fitting, if present)."""
    names = model.names
    row: dict[str, Any] = {f"lsq_{n}": math.nan for n in names}
    row.update({f"lsq_{n}_stderr": math.nan for n in names})
    row["lsq_success"] = None
    if model.sim.wide:
        row["_warning"] = "polish skipped: least squares fits Dysonian (narrow) lines only"
        return row
    try:
        from .fitting import fit_spectrum
    except ImportError as e:
        row["_warning"] = f"polish skipped: dysonian_pl.fitting is not available ({e})"
        return row
    field_g = np.asarray(spec.field, dtype=np.float64)
    intensity = np.asarray(spec.intensity, dtype=np.float64) * sign
    ok = np.isfinite(field_g) & np.isfinite(intensity)
    start = {n: float(v) for n, v in zip(names, params, strict=True)}
    try:
        res = fit_spectrum(field_g[ok], intensity[ok], geometry=model.sim.geometry, start=start)
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
    ckpt: str | os.PathLike | DysonianRegressor,
    out_dir: str | os.PathLike = "infer_out",
    *,
    plots: bool = True,
    polish: bool = False,
    progress: bool | None = None,
    trust: bool = False,
    quiet: bool = False,
) -> list[dict]:
    """Predict (B0, dB, p) for every file; write CSV, JSON and overlay PNGs under `out_dir`.

    `paths` are files or glob patterns. A file that cannot be read or prepared gives a
    row with ``status == "error"`` and an ``error`` message; the others continue.
    `ckpt` is a checkpoint path or an already loaded model. `progress`: None shows a
    tqdm bar for more than one file when stderr is a terminal. Warnings go to stderr
    (unless `quiet`) and into each row's ``warnings`` (joined by "; "). All prepared
    spectra go through the network in one `predict_arrays` call.
    """
    model = ckpt if isinstance(ckpt, DysonianRegressor) else load_model(ckpt, trust=trust)
    if not hasattr(model, "checkpoint_meta"):
        model.checkpoint_meta = {"path": None, "format": CHECKPOINT_FORMAT}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    axis = field_axis(model.sim)
    names = model.names
    inputs = expand_inputs(paths)
    pngs = _png_names([Path(p).stem if p else "" for _, p in inputs]) if plots else []

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
        # 1. read and prepare every file
        ready: list[tuple[int, Any, Any]] = []  # (row index, spectrum, prepared)
        for shown, path in inputs:
            row: dict[str, Any] = {"file": Path(shown).name, "path": shown, "status": "ok"}
            row.update({n: math.nan for n in names})
            rows.append(row)
            try:
                if path is None:
                    raise SpectrumFileError(f"{shown}: no file matches this pattern")
                spec = read_spectrum(path)
                prep = prepare_real(spec.field, spec.intensity, axis, name=Path(path).name)
            except (SpectrumFileError, ValueError, OSError) as e:
                row.update(status="error", error=" ".join(str(e).split()), warnings="")
                log(f"error: {row['error']}")
                if bar is not None:
                    bar.update()
                continue
            ready.append((len(rows) - 1, spec, prep))

        # 2. one batched forward pass
        if ready:
            batch = np.stack([prep.spectrum for _, _, prep in ready])
            predictions = predict_arrays(model, batch)

        # 3. reconstruct, warn, polish, plot
        for k, (i, spec, prep) in enumerate(ready):
            row, params = rows[i], predictions[k]
            if bar is not None:
                bar.set_postfix_str(row["file"][-30:], refresh=False)
            finite = np.isfinite(spec.field) & np.isfinite(spec.intensity)
            sweep_lo, sweep_hi = float(spec.field[finite].min()), float(spec.field[finite].max())
            covered = (axis >= sweep_lo) & (axis <= sweep_hi)
            fit = _reconstruct(model, axis, prep, params, covered)
            warns = _warnings_for(
                model, params, prep, axis, Path(spec.path).name, (sweep_lo, sweep_hi)
            )
            row.update({n: float(v) for n, v in zip(names, params, strict=True)})
            row.update(
                amplitude=fit.amplitude,
                baseline_offset=fit.offset,
                baseline_slope=fit.slope,
                rms_residual=fit.rms,
                flipped=bool(prep.flipped),
                coverage=float(prep.coverage),
                sweep_lo=sweep_lo,
                sweep_hi=sweep_hi,
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
                    _fmt_value(n, float(v)) for n, v in zip(names, params, strict=True)
                )
                png = _overlay_png(axis, prep.spectrum, fit.reconstructed_norm, covered, title)
                _atomic_write(out / pngs[i], png)
                row["png"] = pngs[i]
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
            row.setdefault(c, "" if c in ("warnings", "error", "png") else None)
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
            cells = [row["file"], *(f"{row[n]:.4g}" for n in names)]
            w = row.get("warnings") or ""
            n_w = len([x for x in w.split("; ") if x]) if w else 0
            cells.append(f"{n_w} warning(s)" if n_w else "ok")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl infer",
        description="Read spectrometer files (BES3T .DSC/.DTA, ESP/WinEPR .par/.spc, text), "
        "predict B0, dB, p with a trained model, write predictions.csv/.json and overlay PNGs.",
    )
    ap.add_argument("inputs", nargs="+", metavar="FILE_OR_GLOB", help="spectrum files or globs")
    ap.add_argument("--ckpt", help="model checkpoint (.ckpt) written by dysonian_pl training")
    ap.add_argument("--out", default="infer_out", help="output folder (default: infer_out)")
    ap.add_argument("--no-plots", action="store_true", help="do not write overlay PNGs")
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
    """``python -m dysonian_pl infer``: exit 0 all files ok, 1 some failed, 2 usage error."""
    ap = _parser()
    try:
        args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else 2
    ckpt = args.ckpt or default_checkpoint()
    if not ckpt:
        print(
            "error: no checkpoint given: pass --ckpt (a pretrained model is not shipped yet)",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    try:
        model = load_model(ckpt, trust=args.trust)
    except CheckpointError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rows = infer_files(
            args.inputs,
            model,
            args.out,
            plots=not args.no_plots,
            polish=args.polish,
            progress=True if args.progress else None,
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
