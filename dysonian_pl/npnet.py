"""The "fast" network in numpy: prediction from exported weights without torch.

``python -m dysonian_pl infer`` with no ``--ckpt`` reads a few spectra, and importing
torch (2-3 s on a small CPU) would cost it far more than the prediction does. The
shipped models therefore come with an ``.npz`` beside each ``.ckpt``: the network in
eval mode with batch norm folded into the convolutions (`model.fuse_for_inference`),
float32, plus JSON metadata (the checkpoint's ``hyper_parameters`` and ``dysonian_pl``
section, the sigma calibration factors, and the sha256 of the ``.ckpt`` it was made
from). `NumpyPredictor` evaluates it with numpy alone and offers what `infer` uses of
a `predictor.Predictor` (``sim``, ``names``, ``uncertainty``, ``checkpoint_meta``,
``predict_physical``, ``predict_with_sigma``); it gives the torch model's values and
sigmas to float32 rounding (`TOLERANCE`; checked by `compare` when the file is
written and by the tests for the shipped files).

Layout: activations are channels-last (N, L, C) float32. A 1 x k convolution is one
matrix product of the k shifted (dilated, strided) slices of its zero-padded input,
side by side (im2col), with a (k C_in, C_out) weight matrix, for the whole batch at
once. `export_npz` (needs torch) writes the file from a checkpoint; this module
imports only numpy and the standard library at import time. Only the ``"fast"``
architecture is supported; ``"prior"`` checkpoints are read with torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .params import SimulationConfig

__all__ = [
    "NPZ_FORMAT",
    "TOLERANCE",
    "ModelFileError",
    "NumpyPredictor",
    "compare",
    "export_npz",
    "load_npz",
    "sha256_of",
]

#: Bumped when an .npz written by this version cannot be read by older code.
NPZ_FORMAT = 1
#: Largest difference allowed between the numpy and the torch model: values, as a
#: fraction of the target's training span; sigmas, relative to the torch sigma.
TOLERANCE = 1e-4
#: Length reduction of the space-to-depth stem (`model.FOLD`; checked on export).
FOLD = 16
#: The stem pads the spectrum to at least this many folds (three halvings leave one).
MIN_FOLDS = 8
#: log-sigma outputs are clamped to this range before exponentiation (`PredictionMixin`).
LOG_SIGMA_CLAMP = (-12.0, 3.0)


class ModelFileError(ValueError):
    """An .npz model file that is missing, unreadable, not ours or too new; one-line message."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- #
# the network
# --------------------------------------------------------------------------- #
def _conv(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, kernel: int, stride: int, dilation: int, pad: int
) -> np.ndarray:
    """1 x k convolution of channels-last (N, L, C_in) with `w` (k C_in, C_out) and bias `b`.

    Row ``j C_in + c`` of `w` is the weight of tap ``j`` (input ``j dilation`` to the
    right of the output's first tap) and input channel ``c``.
    """
    n, length, c_in = x.shape
    if pad:
        padded = np.zeros((n, length + 2 * pad, c_in), dtype=x.dtype)
        padded[:, pad : pad + length] = x
        x, length = padded, length + 2 * pad
    l_out = (length - dilation * (kernel - 1) - 1) // stride + 1
    if kernel == 1 and stride == 1:
        cols = x
    else:
        span = (l_out - 1) * stride + 1
        cols = np.concatenate(
            [x[:, j * dilation : j * dilation + span : stride] for j in range(kernel)], axis=-1
        )
    out = cols.reshape(n * l_out, kernel * c_in) @ w
    out += b
    return out.reshape(n, l_out, w.shape[1])


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _linspace32(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n).astype(np.float32)


def dispersion_channel(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The numpy twin of `model.dispersion_channel` (float64 FFT, float32 result)."""
    c = np.cumsum((x - mean).astype(np.float64), axis=-1)
    ramp = np.linspace(0.0, 1.0, x.shape[-1])
    c = c - c[:, :1] - (c[:, -1:] - c[:, :1]) * ramp
    spec = np.fft.rfft(c, axis=-1)
    spec[:, 0] = 0
    if x.shape[-1] % 2 == 0:
        spec[:, -1] = 0
    h = np.fft.irfft(spec * -1j, n=x.shape[-1], axis=-1)
    h_std = np.maximum(h.std(axis=-1, ddof=1, keepdims=True), 1e-6)
    return ((h - h.mean(axis=-1, keepdims=True)) / h_std).astype(np.float32)


def project_out_baseline(x: np.ndarray, degree: int) -> np.ndarray:
    """The numpy twin of `model.project_out_baseline` (basis by float64 QR, applied in
    x's dtype)."""
    if degree < 0:
        return x
    length = x.shape[-1]
    if length <= degree + 1:
        return np.zeros_like(x)
    q = _polynomial_basis(length, degree, np.dtype(x.dtype).str)
    return x - (x @ q) @ q.T


@lru_cache(maxsize=8)
def _polynomial_basis(length: int, degree: int, dtype: str) -> np.ndarray:
    """Orthonormal basis (length, degree + 1) of the polynomials over the window, read-only."""
    t = np.linspace(-1.0, 1.0, length)
    q = np.linalg.qr(np.stack([t**k for k in range(degree + 1)], axis=1))[0].astype(dtype)
    q.setflags(write=False)
    return q


def folded_input(
    x: np.ndarray, integral: bool = False, dispersion: bool = False, detrend: int = -1
) -> np.ndarray:
    """(N, L) normalised spectra -> the fast network's stem input (N, L', C FOLD), float32.

    The numpy twin of `model.folded_input_channels`: per-spectrum z-score (unbiased
    variance), peak-to-peak scaled to [-1, 1] and field position in [-1, 1] (and, with
    `integral`, the z-scored running integral about the mean, summed in float64; with
    `dispersion`, `dispersion_channel` after it), all of the spectrum less its
    polynomial baseline of degree `detrend` (-1: none), padded with edge values to whole folds (at least `MIN_FOLDS`), channel ``c FOLD + k``
    at position ``j`` being channel ``c`` at point ``j FOLD + k``.
    """
    x = project_out_baseline(np.asarray(x, dtype=np.float32), detrend)
    n, length = x.shape
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
    var = ((x - mean) ** 2).sum(axis=-1, keepdims=True) / max(length - 1, 1)
    std = np.maximum(np.sqrt(var), 1e-6).astype(np.float32)
    mean = mean.astype(np.float32)
    lo = x.min(axis=-1, keepdims=True)
    span = np.maximum(x.max(axis=-1, keepdims=True) - lo, np.float32(1e-12))
    pos = _linspace32(length)
    extra = []
    if integral:
        c = np.cumsum((x - mean).astype(np.float64), axis=-1)
        c_std = np.maximum(c.std(axis=-1, ddof=1, keepdims=True), 1e-6)
        extra.append(((c - c.mean(axis=-1, keepdims=True)) / c_std).astype(np.float32))
    if dispersion:
        extra.append(dispersion_channel(x, mean))
    padded = max(-(-length // FOLD) * FOLD, MIN_FOLDS * FOLD)
    if padded != length:
        x = np.concatenate([x, np.repeat(x[:, -1:], padded - length, axis=1)], axis=1)
        pos = np.concatenate([pos, np.repeat(pos[-1:], padded - length)])
        extra = [
            np.concatenate([c, np.repeat(c[:, -1:], padded - length, axis=1)], 1) for c in extra
        ]
    m = padded // FOLD
    out = np.empty((n, m, (3 + len(extra)) * FOLD), dtype=np.float32)
    out[:, :, :FOLD] = ((x - mean) / std).reshape(n, m, FOLD)
    out[:, :, FOLD : 2 * FOLD] = (np.float32(2.0) * (x - lo) / span - np.float32(1.0)).reshape(
        n, m, FOLD
    )
    out[:, :, 2 * FOLD : 3 * FOLD] = pos.reshape(1, m, FOLD)
    for i, c in enumerate(extra):
        out[:, :, (3 + i) * FOLD : (4 + i) * FOLD] = c.reshape(n, m, FOLD)
    return out


class NumpyPredictor:
    """A shipped fast model for prediction with numpy: `predictor.Predictor`'s interface
    as far as `infer` uses it. Build it with `load_npz`.

    `weights`: the arrays of the .npz; `meta`: its JSON metadata (see `export_npz`).
    """

    #: never in training mode (`infer.predict_arrays` and friends may ask)
    training = False

    def __init__(self, weights: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        hp = dict(meta["hyper_parameters"])
        hp.setdefault("integral", False)  # files written before the options existed
        hp.setdefault("dispersion", False)
        hp.setdefault("detrend", -1)
        if hp.get("arch", "fast") != "fast":
            raise ValueError(f"architecture {hp.get('arch')!r}: only 'fast' runs in numpy")
        self.hparams = hp
        self.sim = SimulationConfig.from_dict(hp["sim"])
        self.names = self.sim.target_names
        self.uncertainty = bool(hp.get("uncertainty", False))
        self.integral = bool(hp.get("integral", False))
        self.dispersion = bool(hp.get("dispersion", False))
        self.detrend = int(hp.get("detrend", -1))
        self.layers = list(meta["layers"])
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.sigma_scale = np.asarray(meta["sigma_scale"], dtype=np.float64)
        ranges = self.sim.ranges()
        lo = np.array([r[0] for r in ranges.values()], dtype=np.float64)
        hi = np.array([r[1] for r in ranges.values()], dtype=np.float64)
        self.lo, self.span = lo, np.where(hi > lo, hi - lo, 1.0)
        self.n_outputs = int(self.weights["head.w"].shape[1])
        if self.n_outputs != (6 if self.uncertainty else 3) or self.sigma_scale.shape != (3,):
            raise ValueError(
                f"{self.n_outputs} outputs and {self.sigma_scale.size} calibration factors "
                f"for a model with uncertainty={self.uncertainty}"
            )
        self.source_sha256: str | None = meta.get("source_sha256")
        self.checkpoint_meta: dict = dict(meta.get("dysonian_pl") or {})
        self._check_shapes()

    def _check_shapes(self) -> None:
        w = self.weights
        c = (3 + self.integral + self.dispersion) * FOLD
        for i, layer in enumerate(self.layers):
            keys = ("w1", "w2") if layer["op"] == "block" else ("w",)
            for key in keys:
                k = layer["kernel"]
                wt, bias = w[layer[key]], w[layer[key.replace("w", "b")]]
                if wt.shape[0] != k * c or bias.shape != (wt.shape[1],):
                    raise ValueError(
                        f"layer {i} ({layer['op']}): weight {wt.shape}, bias {bias.shape} for "
                        f"{c} input channels and kernel {k}"
                    )
                c = wt.shape[1]
        heads = w["pool.w"].shape[1]
        expected = [
            ("pool.w", (c, heads)), ("pool.b", (heads,)),
            ("trunk.w", (heads * c + heads, w["trunk.w"].shape[1])),
            ("trunk.b", (w["trunk.w"].shape[1],)),
            ("head.w", (w["trunk.w"].shape[1], self.n_outputs)), ("head.b", (self.n_outputs,)),
        ]  # fmt: skip
        for key, shape in expected:
            if w[key].shape != shape:
                raise ValueError(f"{key}: shape {w[key].shape}, expected {shape}")

    # -- the forward pass ------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalised spectra (N, L) -> raw network outputs (N, 3 or 6) in scaled units."""
        w = self.weights
        h = folded_input(x, self.integral, self.dispersion, self.detrend)
        for layer in self.layers:
            k, d, pad = layer["kernel"], layer["dilation"], layer["pad"]
            if layer["op"] == "conv":
                h = _conv(h, w[layer["w"]], w[layer["b"]], k, layer["stride"], d, pad)
                if layer["relu"]:
                    _relu(h)
            else:  # residual block: relu(x + conv2(relu(conv1(x))))
                g = _relu(_conv(h, w[layer["w1"]], w[layer["b1"]], k, 1, d, pad))
                g = _conv(g, w[layer["w2"]], w[layer["b2"]], k, 1, d, pad)
                g += h
                h = _relu(g)
        # attention pooling: softmax over positions per head; pooled features + mean position
        n, length, c = h.shape
        logits = (h.reshape(n * length, c) @ w["pool.w"] + w["pool.b"]).reshape(n, length, -1)
        logits -= logits.max(axis=1, keepdims=True)
        att = np.exp(logits)
        att /= att.sum(axis=1, keepdims=True)  # (N, L, H)
        att_t = att.transpose(0, 2, 1)  # (N, H, L)
        pooled = (att_t @ h).reshape(n, -1)  # (N, H C): head-major as torch's flatten
        where = att_t @ _linspace32(length)  # (N, H)
        z = np.concatenate([pooled, where], axis=1)
        z = _relu(z @ w["trunk.w"] + w["trunk.b"])
        return z @ w["head.w"] + w["head.b"]

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.sim.n_points:
            raise ValueError(
                f"spectra: expected shape (N, {self.sim.n_points}) for this model "
                f"(got {tuple(x.shape)})"
            )
        return x

    def predict_physical(self, x: np.ndarray) -> np.ndarray:
        """Normalised spectra (N, n_points) -> (B0, dB, p) in physical units, float64."""
        out = self.forward(self._check_input(x))[:, :3]
        return out.astype(np.float64) * self.span + self.lo

    def predict_with_sigma(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised spectra -> (values, calibrated standard deviations), physical units.

        The standard deviations are NaN for a model trained without ``uncertainty``.
        """
        out = self.forward(self._check_input(x))
        value = out[:, :3].astype(np.float64) * self.span + self.lo
        if not self.uncertainty:
            return value, np.full_like(value, np.nan)
        log_sigma = np.clip(out[:, 3:6], *LOG_SIGMA_CLAMP).astype(np.float64)
        return value, np.exp(log_sigma) * self.span * self.sigma_scale

    # -- what torch models have and infer may call -------------------------------
    def eval(self) -> NumpyPredictor:
        return self

    def train(self, mode: bool = True) -> NumpyPredictor:
        if mode:
            raise RuntimeError("a NumpyPredictor is for prediction only; it cannot be trained")
        return self


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #
def load_npz(path: str | os.PathLike) -> NumpyPredictor:
    """A `NumpyPredictor` from an .npz written by `export_npz`.

    `checkpoint_meta` is the source checkpoint's ``dysonian_pl`` section plus ``path``
    (this file, resolved), ``engine`` ("numpy"), ``source_checkpoint`` (its name) and
    ``source_sha256``. Errors are `ModelFileError` naming the file.
    """
    p = Path(path).expanduser()
    name = p.name
    if not p.is_file():
        raise ModelFileError(f"model {p}: not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelFileError(
            f"model {name}: not a readable .npz model file ({msg}); write one with "
            "scripts/export_pretrained.py"
        ) from None
    if "meta" not in arrays:
        raise ModelFileError(f"model {name}: no 'meta' entry; not a dysonian_pl .npz model")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"model {name}: its metadata is not valid JSON ({e})") from None
    fmt = meta.get("npz_format") if isinstance(meta, dict) else None
    if not isinstance(fmt, int):
        raise ModelFileError(f"model {name}: no 'npz_format' in its metadata; not ours")
    if fmt > NPZ_FORMAT:
        from . import __version__

        raise ModelFileError(
            f"model {name}: npz format {fmt} is newer than this dysonian_pl ({__version__}, "
            f"reads format <= {NPZ_FORMAT}); upgrade dysonian_pl"
        )
    try:
        model = NumpyPredictor(arrays, meta)
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing entry {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
        raise ModelFileError(f"model {name}: cannot rebuild the network ({what[:200]})") from None
    model.checkpoint_meta.update(
        path=str(p.resolve()),
        engine="numpy",
        source_checkpoint=meta.get("source_name"),
        source_sha256=meta.get("source_sha256"),
    )
    return model


def _conv_entry(conv, key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A fused Conv2d (1 x k, with bias) -> its weight matrix and bias in `arrays`."""
    (kh, k), (sh, stride), (dh, dilation) = conv.kernel_size, conv.stride, conv.dilation
    ph, pad = conv.padding
    if (kh, sh, dh, ph) != (1, 1, 1, 0) or conv.groups != 1 or conv.bias is None:
        raise ValueError(f"{key}: not a 1 x k convolution with bias (fuse batch norm first)")
    w = conv.weight.detach().double().numpy()[:, :, 0, :]  # (C_out, C_in, k)
    arrays[f"{key}.w"] = np.ascontiguousarray(w.transpose(2, 1, 0).reshape(-1, w.shape[0]))
    arrays[f"{key}.b"] = conv.bias.detach().double().numpy()
    return {"kernel": k, "stride": stride, "dilation": dilation, "pad": pad}


def _network_arrays(net) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The folded fast network's weights (float64 here) and layer list."""
    from torch import nn

    from .model import FOLD as TORCH_FOLD
    from .model import AttentionPool, Block2d, fuse_for_inference

    if getattr(net, "arch", None) != "fast":
        raise ValueError(f"architecture {getattr(net, 'arch', None)!r}: only 'fast' exports")
    if TORCH_FOLD != FOLD:
        raise ValueError(f"model.FOLD is {TORCH_FOLD}, npnet.FOLD {FOLD}: update npnet")
    fused = fuse_for_inference(net)
    arrays: dict[str, np.ndarray] = {}
    layers: list[dict[str, Any]] = []
    for i, m in enumerate(fused.features):
        key = f"features.{i}"
        if isinstance(m, nn.Conv2d):
            layers.append({"op": "conv", "w": f"{key}.w", "b": f"{key}.b", "relu": False,
                           **_conv_entry(m, key, arrays)})  # fmt: skip
        elif isinstance(m, nn.ReLU):
            if not layers or layers[-1]["op"] != "conv" or layers[-1]["relu"]:
                raise ValueError(f"{key}: a ReLU that does not follow a convolution")
            layers[-1]["relu"] = True
        elif isinstance(m, Block2d):
            e1 = _conv_entry(m.conv1, f"{key}.conv1", arrays)
            e2 = _conv_entry(m.conv2, f"{key}.conv2", arrays)
            if e1 != e2 or e1["stride"] != 1 or not isinstance(m.bn1, nn.Identity):
                raise ValueError(f"{key}: a residual block this exporter does not know")
            layers.append({"op": "block", "w1": f"{key}.conv1.w", "b1": f"{key}.conv1.b",
                           "w2": f"{key}.conv2.w", "b2": f"{key}.conv2.b", **e1})  # fmt: skip
        elif not isinstance(m, nn.Identity):
            raise ValueError(f"{key}: cannot export a {type(m).__name__}")
    pool = fused.pool
    if not isinstance(pool, AttentionPool):
        raise ValueError(f"pool: cannot export a {type(pool).__name__}")
    arrays["pool.w"] = pool.logits.weight.detach().double().numpy()[:, :, 0].T.copy()
    arrays["pool.b"] = pool.logits.bias.detach().double().numpy()
    linear, relu = fused.trunk[0], fused.trunk[1]
    if not (isinstance(linear, nn.Linear) and isinstance(relu, nn.ReLU)):
        raise ValueError("trunk: expected Linear, ReLU, Dropout")
    if not all(isinstance(t, (nn.Dropout, nn.Identity)) for t in list(fused.trunk)[2:]):
        raise ValueError("trunk: expected Linear, ReLU, Dropout")
    arrays["trunk.w"] = linear.weight.detach().double().numpy().T.copy()
    arrays["trunk.b"] = linear.bias.detach().double().numpy()
    if not all(isinstance(h, nn.Linear) for h in fused.heads):
        raise ValueError("heads: expected Linear layers")
    arrays["head.w"] = np.concatenate(
        [h.weight.detach().double().numpy().T for h in fused.heads], axis=1
    )
    arrays["head.b"] = np.concatenate([h.bias.detach().double().numpy() for h in fused.heads])
    return arrays, layers


def npz_bytes(model, *, source_sha256: str, source_name: str) -> bytes:
    """The .npz file (bytes) of a torch `predictor.Predictor` (or `DysonianRegressor`).

    Needs torch. The metadata records the checkpoint's ``hyper_parameters`` and
    ``dysonian_pl`` section (`model.checkpoint_meta`, without machine-specific paths),
    the calibration factors and the source checkpoint's name and sha256.
    """
    import io

    arrays, layers = _network_arrays(model.net)
    meta_section = {
        k: v
        for k, v in dict(getattr(model, "checkpoint_meta", {}) or {}).items()
        if k not in ("path", "engine", "source_checkpoint", "source_sha256")
    }
    meta = {
        "npz_format": NPZ_FORMAT,
        "what": "dysonian_pl fast network, batch norm folded, float32; see dysonian_pl.npnet",
        "hyper_parameters": json.loads(json.dumps(dict(model.hparams))),
        "dysonian_pl": json.loads(json.dumps(meta_section)),
        "sigma_scale": [float(v) for v in model.sigma_scale.detach().double().cpu().numpy()],
        "source_name": source_name,
        "source_sha256": source_sha256,
        "layers": layers,
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.array(json.dumps(meta, sort_keys=True)),
        **{k: v.astype(np.float32) for k, v in arrays.items()},
    )
    return buf.getvalue()


def export_npz(ckpt_path: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the .npz of the checkpoint `ckpt_path` to `dst` (atomically); needs torch.

    The checkpoint is read safely (`infer.load_model`); its sha256 goes into the
    metadata. Does not compare the two models: see `compare`.
    """
    from .atomic import atomic_open
    from .infer import load_model

    src = Path(ckpt_path)
    model = load_model(src)
    data = npz_bytes(model, source_sha256=sha256_of(src), source_name=src.name)
    dst = Path(dst)
    with atomic_open(dst, "wb") as fh:
        fh.write(data)
    return dst


def compare(reference, candidate: NumpyPredictor, spectra: np.ndarray) -> tuple[float, float]:
    """The largest differences of `candidate` from the torch `reference` on `spectra`:
    (values, as a fraction of each target's span; sigmas, relative). NaN sigmas of a
    model without uncertainty must be NaN in both (else the sigma difference is inf).
    """
    from .infer import predict_arrays

    a_val, a_sig = predict_arrays(reference, spectra, return_sigma=True)
    b_val, b_sig = predict_arrays(candidate, spectra, return_sigma=True)
    span = candidate.span
    d_val = float(np.max(np.abs(a_val - b_val) / span)) if len(a_val) else 0.0
    nan_a, nan_b = np.isnan(a_sig), np.isnan(b_sig)
    if not np.array_equal(nan_a, nan_b):
        return d_val, math.inf
    ok = ~nan_a
    d_sig = float(np.max(np.abs(a_sig[ok] - b_sig[ok]) / np.abs(a_sig[ok]))) if ok.any() else 0.0
    return d_val, d_sig
