"""`python -m dysonian_pl export`: a checkpoint as a TorchScript file for fast prediction.

    python -m dysonian_pl export --ckpt best.ckpt --out model.pt

The file holds the network in eval mode with batch norm folded into the convolutions,
traced, and the target scaling, so that it maps normalised spectra straight to physical
units with no Lightning, no `dysonian_pl` and no Python model code:

    import json, torch
    extra = {"dysonian_pl.json": ""}
    model = torch.jit.load("model.pt", _extra_files=extra)
    meta = json.loads(extra["dysonian_pl.json"])       # window, n_points, names, ...
    values, sigmas = model(spectra)   # (N, n_points) float32 -> two (N, 3) float64

`spectra` must be prepared as training prepared them (`preprocess.normalise`, or
`preprocess.prepare_real` for a spectrometer file: polarity rule, peak-to-peak 1, on the
model's `n_points`). `sigmas` are the model's own validation-calibrated standard
deviations (NaN without ``uncertainty``), not the zoom-aware calibration `infer` applies
to a window-agnostic model; the values of a window-agnostic model are in its nominal
window (per mille of the sweep, `meta["sim"]["window"]`). On the 2-core CPU here the
traced default network predicts one spectrum in about 2 ms against 3.3 ms eager
(docs/benchmarks.md).

TorchScript is deprecated in recent torch (2.13 warns on `torch.jit.save` and `load`) but still
works in the torch this project pins; the traced network is plain convolutions, so an
ONNX or `torch.export` path can replace it when TorchScript goes.

The file is written atomically and only after the traced module, loaded back, has
reproduced the checkpoint's predictions on 64 simulated spectra.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_open
from .infer import CheckpointError, load_model
from .model import fuse_for_inference
from .npnet import sha256_of
from .predictor import Predictor

__all__ = ["EXPORT_FORMAT", "ExportedPredictor", "export_torchscript", "load_exported", "main"]

EXPORT_FORMAT = "dysonian_pl-torchscript/1"
META_NAME = "dysonian_pl.json"


class ExportedPredictor(nn.Module):
    """Normalised spectra (N, n_points) -> (values, sigmas), both (N, 3) float64.

    Scripted around the traced network, so that a spectrum of another length is refused
    with a message rather than read on a wrong axis.
    """

    def __init__(self, net: nn.Module, model: Predictor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("lo", model.scaler.lo.clone().cpu())
        self.register_buffer("span", model.scaler.span.clone().cpu())
        self.register_buffer("sigma_scale", model.sigma_scale.detach().clone().cpu())
        self.uncertainty = bool(model.uncertainty)
        self.n_points = int(model.sim.n_points)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or x.size(1) != self.n_points:
            raise ValueError(
                "spectra: expected shape (N, " + str(self.n_points) + ") for this model"
            )
        out = self.net(x.float())
        value = out[:, :3].double() * self.span + self.lo
        if self.uncertainty:
            sigma = out[:, 3:6].clamp(-12.0, 3.0).double().exp() * self.span * self.sigma_scale
        else:
            sigma = torch.full_like(value, float("nan"))
        return value, sigma


def _metadata(model: Predictor, ckpt: Path) -> dict:
    return {
        "format": EXPORT_FORMAT,
        "checkpoint": ckpt.name,
        "checkpoint_sha256": sha256_of(ckpt),
        "names": list(model.names),
        "n_points": model.sim.n_points,
        "uncertainty": bool(model.uncertainty),
        "sim": model.sim.to_dict(),
        "input": "normalised spectra (N, n_points) float32: polarity rule, peak-to-peak 1",
        "output": "(values, sigmas), (N, 3) float64 each, in the model's window units",
    }


def export_torchscript(ckpt: str | Path, out: str | Path, *, check_n: int = 64) -> dict:
    """Trace the checkpoint's predictor, check it against the checkpoint, write `out`.

    Returns the metadata stored in the file. Raises `CheckpointError` for a file that is
    not a usable checkpoint and `ValueError` for an `out` that is the checkpoint itself.
    """
    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and out.resolve() == ckpt.resolve():
        raise ValueError(f"--out {out}: would overwrite the checkpoint it exports")
    model = load_model(ckpt)
    if not isinstance(model, Predictor):
        raise CheckpointError(
            f"{ckpt}: export takes one network's .ckpt (got {type(model).__name__}; an "
            "ensemble manifest or a .npz cannot be traced)"
        )
    model.eval()
    from .simulate import simulate

    x, _ = simulate(model.sim, 12345, 10**9 + np.arange(check_n))  # never a training index
    net = fuse_for_inference(model.net).eval()
    with torch.inference_mode(), warnings.catch_warnings():
        # the tracer warns that the spectrum's length is fixed: it is, by the model
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced_net = torch.jit.trace(net, x[:8], check_trace=False)
    traced = torch.jit.script(ExportedPredictor(traced_net, model).eval())
    meta = _metadata(model, ckpt)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={META_NAME: json.dumps(meta)})
    # the bytes, loaded back, must predict what the checkpoint predicts
    loaded, _ = load_exported(io.BytesIO(buffer.getvalue()))
    with torch.inference_mode():
        value, sigma = loaded(x)
        ref_value, ref_sigma = model.predict_with_sigma(x)
    scale = model.scaler.span
    if not torch.allclose(value / scale, ref_value.cpu() / scale, rtol=0, atol=1e-5):
        raise RuntimeError(f"{out}: the traced module does not reproduce {ckpt}; not written")
    if model.uncertainty and not torch.allclose(sigma, ref_sigma.cpu(), rtol=1e-4, atol=0):
        raise RuntimeError(f"{out}: the traced sigmas do not reproduce {ckpt}; not written")
    with atomic_open(out, "wb") as fh:
        fh.write(buffer.getvalue())
    return meta


def load_exported(source) -> tuple[torch.jit.ScriptModule, dict]:
    """(module, metadata) of an exported file (a path or a binary file object)."""
    extra = {META_NAME: ""}
    try:
        module = torch.jit.load(source, map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: not a TorchScript file ({err})".split("\n")[0]) from err
    if not extra[META_NAME]:
        raise CheckpointError(f"{source}: a TorchScript file without dysonian_pl metadata")
    meta = json.loads(extra[META_NAME])
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{source}: export format {meta.get('format')!r}, this version reads {EXPORT_FORMAT!r}"
        )
    return module.eval(), meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl export",
        description="Write a checkpoint as a TorchScript file (batch norm folded, traced, "
        "target scaling included): normalised spectra in, values and sigmas out.",
    )
    ap.add_argument("--ckpt", required=True, help="a .ckpt of one network (fit's best-*.ckpt)")
    ap.add_argument("--out", required=True, help="the TorchScript file to write (e.g. model.pt)")
    ap.add_argument("--verbose", action="store_true", help="tracebacks")
    args = ap.parse_args(argv)
    try:
        meta = export_torchscript(args.ckpt, args.out)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {meta['n_points']}-point spectra -> "
        f"{', '.join(meta['names'])}{' with sigmas' if meta['uncertainty'] else ''}"
    )
    return 0
