"""Ensembles of window-agnostic models: several independently trained networks read as one.

An ensemble is a small JSON manifest (``*.ensemble.json``) beside its members'
checkpoints. Each member is read through its numpy export (``.npz`` beside the ``.ckpt``,
`npnet`) when that export was made from the listed checkpoint, else from the checkpoint
with torch; every member checkpoint's sha256 is recorded in the manifest, so a member
retrained or replaced after the ensemble was calibrated is refused, not silently mixed in.

The ensemble's prediction is the mixture of its members' Gaussians (equal weights):

    value = mean_i(mu_i),   sigma^2 = mean_i(sigma_i^2 + mu_i^2) - value^2

i.e. the members' own variance plus their disagreement. The members' own
``sigma_calibration`` tables are not used: the manifest carries the ensemble's table,
fitted on the mixture by ``python -m dysonian_pl calibrate --ckpt X.ensemble.json``
(`calibration.calibrate_model`).

Make one with ``python -m dysonian_pl ensemble A.ckpt B.ckpt ... --out X.ensemble.json``;
`infer`, `sets` and `calibrate` take the manifest wherever they take a checkpoint.
Imports neither torch nor Lightning unless a member has to be read from its checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .infer import CheckpointError, _engine

__all__ = [
    "ENSEMBLE_FORMAT",
    "SUFFIX",
    "Ensemble",
    "EnsembleError",
    "is_manifest",
    "load_ensemble",
    "mixture",
    "write_manifest",
]

ENSEMBLE_FORMAT = "dysonian_pl-ensemble/1"
SUFFIX = ".ensemble.json"


def is_manifest(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".json")


def mixture(values: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of an equal-weight mixture of Gaussians.

    `values`, `sigmas`: (M, N, K) member means and standard deviations. Returns (N, K)
    arrays: the mean of the means, and sqrt(mean(sigma^2 + mu^2) - mean^2) computed as
    sqrt(mean(sigma^2) + mean((mu - mean)^2)), which cannot go negative by rounding.
    """
    values = np.asarray(values, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    mean = values.mean(axis=0)
    var = (sigmas**2).mean(axis=0) + ((values - mean) ** 2).mean(axis=0)
    return mean, np.sqrt(var)


class Ensemble:
    """Members (`predictor.Predictor` or `npnet.NumpyPredictor`) that share one simulation
    config, read as one model. Has what `infer` uses of a model: ``sim``, ``names``,
    ``uncertainty``, ``checkpoint_meta`` (the manifest's, with its calibration table)."""

    def __init__(self, members: list, meta: dict[str, Any] | None = None) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members (got {len(members)})")
        first = members[0]
        for i, m in enumerate(members[1:], start=2):
            if m.sim != first.sim or tuple(m.names) != tuple(first.names):
                raise ValueError(
                    f"member {i} was trained for other spectra than member 1 (simulation "
                    "config or targets differ): an ensemble's members must share them"
                )
        for i, m in enumerate(members, start=1):
            if not getattr(m, "uncertainty", False):
                raise ValueError(
                    f"member {i} has no uncertainty head: every member must predict a sigma "
                    "(train with --model.uncertainty true)"
                )
        self.members = list(members)
        self.sim = first.sim
        self.names = first.names
        self.uncertainty = True
        self.training = False
        self.checkpoint_meta: dict[str, Any] = dict(meta or {})

    @property
    def engine(self) -> str:
        kinds = {_engine(m) for m in self.members}
        return kinds.pop() if len(kinds) == 1 else "numpy+torch"

    def eval(self) -> Ensemble:
        return self

    def train(self, mode: bool = True) -> Ensemble:
        if mode:
            raise RuntimeError("an Ensemble is for prediction only")
        return self

    def predict(self, spectra: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """(values, sigmas) of the mixture for prepared spectra (N, n_points), in the
        model's (nominal) units; uncalibrated: `infer.read_zoomed` applies the table."""
        from .infer import predict_arrays

        kwargs["return_sigma"] = True
        outs = [predict_arrays(m, spectra, **kwargs) for m in self.members]
        return mixture(np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]))


class EnsembleError(CheckpointError):
    """A manifest that is missing, unreadable, not ours, or whose members do not match it."""


def _member_paths(manifest: Path, entry: dict) -> tuple[Path, Path | None]:
    ckpt = manifest.parent / entry["ckpt"]
    npz = manifest.parent / entry["npz"] if entry.get("npz") else None
    return ckpt, npz


def read_manifest(path: str | os.PathLike) -> dict:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EnsembleError(f"ensemble {p}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnsembleError(f"ensemble {p}: not a readable JSON manifest ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != ENSEMBLE_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise EnsembleError(
            f"ensemble {p}: 'format' must be {ENSEMBLE_FORMAT!r} (got {got!r}); "
            "not a dysonian_pl ensemble manifest"
        )
    members = doc.get("members")
    if (
        not isinstance(members, list)
        or len(members) < 2
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("ckpt"), str)
            and isinstance(m.get("sha256"), str)
            for m in members
        )
    ):
        raise EnsembleError(
            f"ensemble {p}: 'members' must list at least two entries with 'ckpt' and 'sha256'"
        )
    return doc


def load_ensemble(path: str | os.PathLike, *, engine: str = "auto", say=None) -> Ensemble:
    """The ensemble of manifest `path`.

    `engine`: ``"auto"`` reads each member from its ``.npz`` export when that was made
    from the listed checkpoint (else from the checkpoint, with torch, saying so through
    `say`, default stderr); ``"torch"`` reads every member from its checkpoint. A member
    checkpoint whose sha256 differs from the manifest's is an `EnsembleError`.
    """
    from .infer import load_model
    from .npnet import sha256_of

    if engine not in ("auto", "torch"):
        raise ValueError(f"engine: must be 'auto' or 'torch' (got {engine!r})")
    say = say or (lambda m: print(m, file=sys.stderr))
    p = Path(path).expanduser()
    doc = read_manifest(p)
    members = []
    for i, entry in enumerate(doc["members"], start=1):
        ckpt, npz = _member_paths(p, entry)
        model = None
        if engine == "auto" and npz is not None and npz.is_file():
            try:
                candidate = load_model(npz)
            except CheckpointError as e:
                say(f"warning: ensemble {p.name}, member {i}: {e}; reading {ckpt.name} with torch")
            else:
                if candidate.source_sha256 == entry["sha256"]:
                    model = candidate
                else:
                    say(
                        f"warning: ensemble {p.name}, member {i}: {npz.name} was not made from "
                        f"the listed {ckpt.name}; reading the .ckpt with torch (rewrite it with: "
                        f"python scripts/export_pretrained.py --npz-only {ckpt})"
                    )
        if model is None:
            if not ckpt.is_file():
                raise EnsembleError(f"ensemble {p}: member {i} {ckpt}: no such file")
            if sha256_of(ckpt) != entry["sha256"]:
                raise EnsembleError(
                    f"ensemble {p}: member {i} {ckpt.name} is not the checkpoint the ensemble "
                    "was made (and calibrated) with (sha256 differs); make the ensemble again "
                    "(python -m dysonian_pl ensemble ...) and calibrate it"
                )
            model = load_model(ckpt)
        members.append(model)
    meta = {k: v for k, v in doc.items() if k != "members"}
    meta["path"] = str(p.resolve())
    meta["members"] = [
        {"ckpt": e["ckpt"], "sha256": e["sha256"], "engine": _engine(m)}
        for e, m in zip(doc["members"], members, strict=True)
    ]
    try:
        return Ensemble(members, meta)
    except ValueError as e:
        raise EnsembleError(f"ensemble {p}: {e}") from None


def manifest_text(
    dst: Path, ckpts: list[Path], note: str = "", calibration: dict | None = None
) -> str:
    """The manifest for `ckpts` to be written at `dst` (member paths relative to it)."""
    from .npnet import sha256_of

    members = []
    for c in ckpts:
        entry = {"ckpt": os.path.relpath(c, dst.parent), "sha256": sha256_of(c)}
        npz = c.with_suffix(".npz")
        if npz.is_file():
            entry["npz"] = os.path.relpath(npz, dst.parent)
        members.append(entry)
    doc: dict[str, Any] = {"format": ENSEMBLE_FORMAT, "members": members}
    if note:
        doc["note"] = note
    if calibration:
        doc["sigma_calibration"] = calibration
    return json.dumps(doc, indent=1) + "\n"


def write_manifest(
    dst: str | os.PathLike, ckpts: list, note: str = "", calibration: dict | None = None
) -> Ensemble:
    """Write the manifest of `ckpts` at `dst` (atomically), after checking that the
    members load and can form an ensemble; returns the ensemble as read back."""
    from .atomic import atomic_write_text
    from .infer import load_model

    dst = Path(dst)
    ckpts = [Path(c) for c in ckpts]
    if not dst.name.lower().endswith(".json"):
        raise EnsembleError(f"--out {dst}: must end in {SUFFIX}")
    for c in ckpts:
        if c.suffix.lower() != ".ckpt" or not c.is_file():
            raise EnsembleError(f"member {c}: expected an existing .ckpt file")
    try:
        Ensemble([load_model(c) for c in ckpts])
    except ValueError as e:  # names the member; CheckpointError names the file itself
        if isinstance(e, CheckpointError):
            raise
        raise EnsembleError(f"--out {dst}: {e}") from None
    atomic_write_text(dst, manifest_text(dst, ckpts, note, calibration))
    return load_ensemble(dst)


def rewrite_calibration(src: str | os.PathLike, dst: str | os.PathLike, table: dict) -> None:
    """The manifest `src` with its ``sigma_calibration`` replaced, written at `dst`
    (atomically; member paths made relative to `dst`)."""
    from .atomic import atomic_write_text

    src, dst = Path(src), Path(dst)
    doc = read_manifest(src)
    for entry in doc["members"]:
        ckpt, npz = _member_paths(src, entry)
        entry["ckpt"] = os.path.relpath(ckpt.resolve(), dst.resolve().parent)
        if npz is not None:
            entry["npz"] = os.path.relpath(npz.resolve(), dst.resolve().parent)
    doc["sigma_calibration"] = table
    atomic_write_text(dst, json.dumps(doc, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m dysonian_pl ensemble",
        description="Make an ensemble of window-agnostic models (a JSON manifest beside "
        "their checkpoints); then calibrate it: python -m dysonian_pl calibrate --ckpt "
        "OUT --out OUT.",
    )
    ap.add_argument("ckpts", nargs="+", metavar="CKPT", help="member checkpoints (at least two)")
    ap.add_argument("--out", required=True, help=f"manifest to write (ends in {SUFFIX})")
    ap.add_argument("--note", default="", help="provenance text stored in the manifest")
    args = ap.parse_args(argv)
    if len(args.ckpts) < 2:
        print(f"error: CKPT: at least two members (got {len(args.ckpts)})", file=sys.stderr)
        return 2
    try:
        ens = write_manifest(args.out, args.ckpts, args.note)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: ensemble of {len(ens.members)} {ens.sim.geometry} models "
        f"(uncalibrated: python -m dysonian_pl calibrate --ckpt {args.out} --out {args.out})"
    )
    return 0
