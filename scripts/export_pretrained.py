"""Strip a training checkpoint to what prediction needs, for `dysonian_pl/pretrained/`,
and write its numpy export (.npz) beside it.

    python scripts/export_pretrained.py BEST.ckpt dysonian_pl/pretrained/universal-plate.ckpt \
        --note "trained by: python -m dysonian_pl fit --config ..."
    # only the .npz, beside already exported checkpoints (e.g. after a change to npnet):
    python scripts/export_pretrained.py --npz-only dysonian_pl/pretrained/universal-*.ckpt

The .ckpt keeps the weights (float32), the hyper-parameters and the `dysonian_pl`
section (simulation config, field axis, ranges, calibration); it drops optimizer and
scheduler states, callbacks and loop state. It loads with `torch.load(weights_only=True)`
and `dysonian_pl.infer.load_model`, and predicts exactly what the source checkpoint
predicts. The .npz (`dysonian_pl.npnet`: batch norm folded, float32, the .ckpt's sha256
in its metadata) is what `infer` runs without torch; it must predict what the .ckpt
predicts to `npnet.TOLERANCE` (values: fraction of each target's span; sigmas:
relative). Both are checked on 64 simulated spectra before either file replaces
anything: on a mismatch neither is written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from dysonian_pl import npnet
from dysonian_pl.infer import CheckpointError, load_model, predict_arrays, read_checkpoint
from dysonian_pl.simulate import simulate

KEEP = ("state_dict", "hyper_parameters", "dysonian_pl", "pytorch-lightning_version", "epoch",
        "global_step")  # fmt: skip
#: spectra both exports are checked on (indices from 10**9: never in a training split)
N_CHECK = 64


def _temporary(dst: Path, data: bytes) -> Path:
    """`data` in a new temporary sibling of `dst` (fsynced), renamed onto it only later."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.tmp-", suffix=dst.suffix, dir=dst.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    return Path(tmp)


def _check_spectra(model) -> np.ndarray:
    return simulate(model.sim, 0, 10**9 + np.arange(N_CHECK))[0].numpy()


def _npz_for(ckpt_model, ckpt_bytes: bytes, name: str, dst: Path) -> tuple[Path, str]:
    """The .npz of `ckpt_model` (read from a file with `ckpt_bytes`) in a temporary file
    beside `dst`, compared with it; (temporary path, one line) or raises ValueError."""
    import hashlib

    data = npnet.npz_bytes(
        ckpt_model, source_sha256=hashlib.sha256(ckpt_bytes).hexdigest(), source_name=name
    )
    tmp = _temporary(dst, data)
    try:
        npz_model = load_model(tmp)
        d_val, d_sig = npnet.compare(ckpt_model, npz_model, _check_spectra(ckpt_model))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not (d_val <= npnet.TOLERANCE and d_sig <= npnet.TOLERANCE):
        tmp.unlink(missing_ok=True)
        raise ValueError(
            f"{dst.name} does not predict what {name} predicts: largest difference "
            f"{d_val:.3g} of a target's span, {d_sig:.3g} relative in sigma (allowed "
            f"{npnet.TOLERANCE:g}); nothing written"
        )
    return tmp, f"numpy vs torch on {N_CHECK} spectra: {d_val:.2g} of span, {d_sig:.2g} in sigma"


def export(src: Path, dst: Path, note: str) -> int:
    ckpt = read_checkpoint(src)
    out = {k: ckpt[k] for k in KEEP if k in ckpt}
    out["dysonian_pl"] = {**ckpt["dysonian_pl"], "exported_from": src.name}
    if note:
        out["dysonian_pl"]["note"] = note
    buf = io.BytesIO()
    torch.save(out, buf)
    ckpt_bytes = buf.getvalue()
    dst.parent.mkdir(parents=True, exist_ok=True)
    npz_dst = dst.with_suffix(".npz")
    tmp_ckpt = _temporary(dst, ckpt_bytes)
    tmp_npz = None
    try:
        src_model, dst_model = load_model(src), load_model(tmp_ckpt)
        x = _check_spectra(src_model)
        a_val, a_sig = predict_arrays(src_model, x, return_sigma=True)
        b_val, b_sig = predict_arrays(dst_model, x, return_sigma=True)
        if not (np.array_equal(a_val, b_val) and np.array_equal(a_sig, b_sig, equal_nan=True)):
            print(f"error: {dst} would not predict what {src} predicts; nothing written",
                  file=sys.stderr)  # fmt: skip
            return 1
        tmp_npz, line = _npz_for(dst_model, ckpt_bytes, dst.name, npz_dst)
        os.replace(tmp_ckpt, dst)
        os.replace(tmp_npz, npz_dst)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for t in (tmp_ckpt, tmp_npz):
            if t is not None:
                with contextlib.suppress(OSError):
                    t.unlink()
    print(f"{dst}: {dst.stat().st_size / 1e6:.2f} MB, sha256 {npnet.sha256_of(dst)}, "
          f"predictions identical to {src.name} on {N_CHECK} spectra")  # fmt: skip
    print(f"{npz_dst}: {npz_dst.stat().st_size / 1e6:.2f} MB; {line}")
    return 0


def export_npz_only(ckpt_path: Path) -> int:
    """The .npz beside an exported checkpoint, from that checkpoint as it is."""
    if ckpt_path.suffix.lower() != ".ckpt":
        print(f"error: {ckpt_path}: expected an exported .ckpt", file=sys.stderr)
        return 1
    model = load_model(ckpt_path)
    npz_dst = ckpt_path.with_suffix(".npz")
    try:
        tmp, line = _npz_for(model, ckpt_path.read_bytes(), ckpt_path.name, npz_dst)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.replace(tmp, npz_dst)
    print(f"{npz_dst}: {npz_dst.stat().st_size / 1e6:.2f} MB, from {ckpt_path.name} "
          f"(sha256 {npnet.sha256_of(ckpt_path)}); {line}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="SRC DST: export SRC to DST (.ckpt) and DST's .npz. "
        "--npz-only CKPT...: write only the .npz beside each exported CKPT.",
    )
    ap.add_argument("paths", nargs="+", metavar="PATH", help="SRC DST, or CKPT... with --npz-only")
    ap.add_argument("--note", default="", help="provenance text stored in the .ckpt")
    ap.add_argument(
        "--npz-only",
        action="store_true",
        help="write only the .npz beside each given exported .ckpt",
    )
    a = ap.parse_args(argv)
    try:
        if a.npz_only:
            if a.note:
                ap.error("--note: the .npz takes its metadata from the .ckpt (no --note)")
            return max(export_npz_only(Path(p)) for p in a.paths)
        if len(a.paths) != 2:
            ap.error(f"expected SRC DST (got {len(a.paths)} paths); or --npz-only CKPT...")
        src, dst = (Path(p) for p in a.paths)
        if dst.suffix.lower() != ".ckpt":
            ap.error(f"DST {dst}: must end in .ckpt (the .npz is written beside it)")
        return export(src, dst, a.note)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
