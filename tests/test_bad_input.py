"""Bad input gets one clear line and loses nothing (issue 5).

Every case asserts the one line a user sees (``error: ...`` naming the option or file,
the value and what is allowed), that there is no traceback, the exit status
(2 for the trainer CLI and for `infer` usage errors, 1 for `infer` when some files
could not be read, as its --help documents), and that nothing was damaged: input
files keep their bytes, a failed run writes no logs, checkpoints or outputs over
good ones.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_N_POINTS

from dysonian_pl import infer
from dysonian_pl.cli import main
from dysonian_pl.lineshapes import dysonian
from dysonian_pl.module import CHECKPOINT_FORMAT, DysonianRegressor
from dysonian_pl.params import SimulationConfig
from dysonian_pl.readers import SpectrumFileError, read_spectrum


# --------------------------------------------------------------------------- helpers
def one_error_line(err: str) -> str:
    """The single ``error: ...`` line of stderr; no traceback anywhere."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(args: list[str], capsys) -> tuple[object, str]:
    status = main(args)
    err = capsys.readouterr().err
    return status, err


def small_run(root: Path) -> list[str]:
    return [
        "--data.sim.n_points", str(TINY_N_POINTS),
        "--data.n_spectra", "20",
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(root),
        "--data.cache_dir", str(root / "cache"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


# --------------------------------------------------------------------------- options
# (option, value, what the line must contain besides the option and the value)
BAD_OPTIONS = [
    ("data.sim.B0", "[3400,3300]", ["min must be <= max", "3400", "3300"]),
    ("data.sim.p", "[0,1]", ["must be > 0", "0.0"]),
    ("data.sim.p", "[-0.5,1]", ["must be > 0", "-0.5"]),
    ("data.sim.dB", "[0,10]", ["must be > 0", "0.0"]),
    ("data.sim.dB", "[500,1500]", ["straddles", "1000 G", "500", "1500"]),
    ("data.sim.n_points", "64", [">= 128", "64"]),
    # names the B0 range it conflicts with, and the window given
    (
        "data.sim.window",
        "[3000,3100]",
        ["data.sim.B0", "must lie inside the window [3000.0, 3100.0]"],
    ),
    ("data.sim.window", "[3400,3300]", ["Bmin < Bmax", "3400", "3300"]),
    ("data.split", "[0.5,0.3,0.3]", ["summing to 1", "0.5, 0.3, 0.3"]),
    ("data.batch_size", "0", [">= 1", "got 0"]),
    ("data.n_spectra", "2", [">= 3", "got 2"]),
    ("data.sim.geometry", "cylinder", ["'plate', 'sphere'", "cylinder"]),
    ("model.arch", "resnet", ["'fast', 'prior'", "resnet"]),
    ("model.lr_scaling", "cubic", ["linear, sqrt, none", "cubic"]),
    ("model.width", "0", [">= 4", "got 0"]),
    ("data.sim.augment.smooth_prob", "1.5", ["[0, 1]", "1.5"]),
    ("data.bogus", "1", ["unrecognized arguments", "--data.bogus 1", "--help"]),
    ("data.batch_size", "abc", ["Expected a <class 'int'>", "abc"]),
    ("trainer.max_epochs", "-5", ["non-negative integer or -1", "-5"]),
]


@pytest.mark.parametrize(
    ("option", "value", "expect"), BAD_OPTIONS, ids=[f"{o}={v}" for o, v, _ in BAD_OPTIONS]
)
def test_bad_option_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, option, value, expect):
    status, err = run_cli(["fit", *small_run(tmp_path), f"--{option}", value], capsys)
    assert status == 2
    line = one_error_line(err)
    shown = option.rsplit(".", 1)[-1] if option.startswith("trainer.") else option
    assert shown in line or shown == "data.sim.window", line
    for text in expect:
        assert text in line, (text, line)
    assert not (tmp_path / "lightning_logs").exists()  # nothing started
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_bad_option_in_a_real_process(tmp_path):
    """The same through `python -m dysonian_pl`: exit status 2, stderr one line, no usage dump."""
    proc = subprocess.run(
        [sys.executable, "-m", "dysonian_pl", "fit", *small_run(tmp_path), "--data.split",
         "[0.7,0.2,0.2]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc.stderr)
    assert "data.split" in line and "[0.7, 0.2, 0.2]" in line and "summing to 1" in line
    assert "usage:" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_verbose_shows_the_traceback(tmp_path):
    from dysonian_pl.params import ConfigError

    with pytest.raises(ConfigError, match="n_points"):
        main(["fit", *small_run(tmp_path), "--data.sim.n_points", "64", "--verbose"])


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A dysonian_pl checkpoint (2 optimiser steps) for the default sim at 256 points."""
    import lightning as L

    from dysonian_pl.data import SpectraDataModule

    sim = SimulationConfig(n_points=TINY_N_POINTS)
    model = DysonianRegressor(sim=sim, width=8)
    dm = SpectraDataModule(sim=sim, n_spectra=30, batch_size=8, cache_dir=None)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(model, dm)
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    trainer.save_checkpoint(path)
    return path


def _test_cli(ckpt_path: Path, root: Path, *extra: str) -> list[str]:
    return ["test", "--ckpt_path", str(ckpt_path), *small_run(root), *extra]


def test_checkpoint_good_baseline_runs(ckpt, tmp_path, capsys):
    cli = main(_test_cli(ckpt, tmp_path))
    capsys.readouterr()
    assert set(cli.model.test_summary) >= {"test/B0_R2", "test/p_MAE"}


@pytest.mark.parametrize(
    ("option", "value", "theirs"),
    [
        ("data.sim.window", "[3250,3460]", "[3256.0, 3455.9]"),
        ("data.sim.geometry", "sphere", "plate"),
        ("data.sim.n_points", "512", "256"),
        ("data.sim.B0", "[3310,3390]", "[3300.0, 3400.0]"),
    ],
)
def test_checkpoint_for_another_field_axis_or_geometry(
    ckpt, tmp_path, capsys, option, value, theirs
):
    before = digests(ckpt.parent)
    status, err = run_cli(_test_cli(ckpt, tmp_path, f"--{option}", value), capsys)
    assert status == 2
    line = one_error_line(err)
    assert option in line and theirs in line, line
    assert "checkpoint was trained with" in line and "use the checkpoint's value" in line
    assert digests(ckpt.parent) == before
    assert not list(tmp_path.rglob("*.ckpt"))


def _bad_ckpt(tmp_path: Path, kind: str, good: Path) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("model: not really\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:3000])
    elif kind == "foreign_torch_file":
        torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    elif kind == "newer_format":
        c = torch.load(good, weights_only=True)
        c["dysonian_pl"]["format"] = CHECKPOINT_FORMAT + 1
        torch.save(c, path)
    return path


CKPT_CASES = [
    ("random_bytes", "not a PyTorch checkpoint file"),
    ("empty", "file is empty (0 bytes)"),
    ("text", "not a PyTorch checkpoint file"),
    ("truncated", "not a"),
    ("foreign_torch_file", "not a dysonian_pl checkpoint"),
    ("newer_format", f"format {CHECKPOINT_FORMAT + 1} is newer than this dysonian_pl"),
]


@pytest.mark.parametrize(("kind", "expect"), CKPT_CASES, ids=[k for k, _ in CKPT_CASES])
def test_bad_checkpoint_file_in_cli_test(ckpt, tmp_path, capsys, kind, expect):
    path = _bad_ckpt(tmp_path, kind, ckpt)
    before = digests(tmp_path)
    status, err = run_cli(_test_cli(path, tmp_path / "run"), capsys)
    assert status == 2
    line = one_error_line(err)
    assert path.name in line and expect in line, line
    assert digests(tmp_path) == before  # the bad file is left as it was, nothing written
    assert not (tmp_path / "run").exists()


def test_missing_checkpoint_in_cli_test(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    status, err = run_cli(_test_cli(missing, tmp_path), capsys)
    assert status == 2
    line = one_error_line(err)
    assert str(missing) in line and "file not found" in line and "'last'" in line


@pytest.mark.parametrize(("kind", "expect"), CKPT_CASES, ids=[k for k, _ in CKPT_CASES])
def test_bad_checkpoint_in_infer_keeps_earlier_outputs(ckpt, tmp_path, capsys, kind, expect):
    """A good `infer` run's outputs survive a later run that stops at a bad checkpoint."""
    spectrum = _text_spectrum(tmp_path / "in", "line.txt")
    out = tmp_path / "out"
    assert infer.main([str(spectrum), "--ckpt", str(ckpt), "--out", str(out), "--no-plots"]) == 0
    capsys.readouterr()
    good = digests(out)
    assert "predictions.csv" in good
    path = _bad_ckpt(tmp_path, kind, ckpt)
    inputs = digests(tmp_path / "in")
    status = infer.main([str(spectrum), "--ckpt", str(path), "--out", str(out), "--no-plots"])
    err = capsys.readouterr().err
    assert status == 2
    line = one_error_line(err)
    assert path.name in line and expect in line, line
    assert digests(out) == good
    assert digests(tmp_path / "in") == inputs


# --------------------------------------------------------------------------- spectrum files
AXIS = (3256.0, 3455.9)


def _line(field: np.ndarray) -> np.ndarray:
    return dysonian(field, 3352.0, 25.0, 1.2, "plate")


def _text_spectrum(folder: Path, name: str, field=None, values=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    field = np.linspace(*AXIS, 600) if field is None else np.asarray(field)
    values = _line(field) if values is None else np.asarray(values)
    path = folder / name
    rows = "\n".join(f"{f:.12g}\t{v:.12g}" for f, v in zip(field, values, strict=True))
    path.write_text("# Field [G]\tIntensity\n" + rows + "\n")
    return path


def _dsc(**over) -> str:
    keys = {
        "BSEQ": "BIG", "IKKF": "REAL", "XTYP": "IDX", "YTYP": "NODATA", "IRFMT": "D",
        "XPTS": "600", "XMIN": str(AXIS[0]), "XWID": str(AXIS[1] - AXIS[0]), "XUNI": "'G'",
    }  # fmt: skip
    keys.update(over)
    return "#DESC\t1.2 * DESCRIPTOR INFORMATION\n" + "".join(f"{k}\t{v}\n" for k, v in keys.items())


def _bes3t(folder: Path, name: str, data: bytes | None, **over) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dsc = folder / f"{name}.DSC"
    dsc.write_text(_dsc(**over))
    if data is not None:
        (folder / f"{name}.DTA").write_bytes(data)
    return dsc


GOOD_DTA = _line(np.linspace(*AXIS, 600)).astype(">f8").tobytes()


def _make_bad_file(folder: Path, case: str) -> Path:
    if case == "missing":
        return folder / "absent.DSC"
    if case == "empty_txt":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "empty.txt").write_bytes(b"")
        return folder / "empty.txt"
    if case == "dsc_without_dta":
        return _bes3t(folder, "lonely", None)
    if case == "dta_too_short":
        return _bes3t(folder, "short", GOOD_DTA[:-80])
    if case == "dta_too_long":
        return _bes3t(folder, "long", GOOD_DTA + b"\0" * 8)
    if case == "billions_of_points":
        return _bes3t(folder, "huge", GOOD_DTA, XPTS="2000000000")
    if case == "unknown_byte_order":
        return _bes3t(folder, "order", GOOD_DTA, BSEQ="MID")
    if case == "unknown_format":
        return _bes3t(folder, "fmt", GOOD_DTA, IRFMT="Q")
    if case == "nan_samples":
        values = _line(np.linspace(*AXIS, 600))
        values[[10, 20]] = np.nan
        return _bes3t(folder, "nan", values.astype(">f8").tobytes())
    if case == "inf_samples":
        field = np.linspace(*AXIS, 600)
        values = _line(field)
        values[5] = np.inf
        return _text_spectrum(folder, "inf.txt", field, values)
    if case == "unknown_extension":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spectrum.xyz").write_text("1 2\n3 4\n")
        return folder / "spectrum.xyz"
    if case == "not_numbers":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "words.csv").write_text("field,intensity\nabc,def\n")
        return folder / "words.csv"
    raise AssertionError(case)


FILE_CASES = [
    ("missing", ["absent.DSC", "not found"]),
    ("empty_txt", ["empty.txt", "file is empty (0 bytes)"]),
    ("dsc_without_dta", ["lonely.DSC", "companion data file lonely.DTA not found"]),
    ("dta_too_short", ["short.DTA", "truncated", "4720 bytes", "needs 4800"]),
    ("dta_too_long", ["long.DTA", "4808 bytes", "needs 4800"]),
    ("billions_of_points", ["huge.DTA", "XPTS=2000000000", "4800 bytes", "needs 16000000000"]),
    ("unknown_byte_order", ["order.DSC", "BSEQ 'MID'", "expected BIG or LIT"]),
    ("unknown_format", ["fmt.DSC", "IRFMT 'Q'", "D (float64)"]),
    ("nan_samples", ["nan.DTA", "2 non-finite value(s) (2 NaN, 0 Inf)", "expected finite"]),
    ("inf_samples", ["inf.txt", "1 non-finite value(s) (0 NaN, 1 Inf)"]),
    ("unknown_extension", ["spectrum.xyz", "unknown file type '.xyz'", ".DSC/.DTA"]),
    ("not_numbers", ["words.csv", "no numeric data rows", "expected 2"]),
]


@pytest.mark.parametrize(("case", "expect"), FILE_CASES, ids=[c for c, _ in FILE_CASES])
def test_bad_spectrum_file_reader_message(tmp_path, case, expect):
    path = _make_bad_file(tmp_path, case)
    before = digests(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(SpectrumFileError) as info:
            read_spectrum(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message
    for text in expect:
        assert text in message, (text, message)
    assert peak < 20 * 2**20, peak  # never allocates what a header claims
    assert digests(tmp_path) == before


@pytest.fixture(scope="module")
def good_out(ckpt, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("good_infer")
    spectrum = _text_spectrum(folder / "in", "line.txt")
    out = folder / "out"
    assert infer.main([str(spectrum), "--ckpt", str(ckpt), "--out", str(out), "--no-plots"]) == 0
    return spectrum, out


@pytest.mark.parametrize(
    ("case", "expect"),
    [FILE_CASES[2], FILE_CASES[5], FILE_CASES[8]],
    ids=["dsc_without_dta", "billions_of_points", "nan_samples"],
)
def test_bad_file_in_infer_is_a_row_error_exit_1(ckpt, tmp_path, capsys, case, expect):
    bad = _make_bad_file(tmp_path / "in", case)
    good = _text_spectrum(tmp_path / "in", "good.txt")
    before = digests(tmp_path / "in")
    status = infer.main([str(good), str(bad), "--ckpt", str(ckpt), "--out", str(tmp_path / "o"),
                         "--no-plots"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1  # some files failed; the good one still has its row
    line = one_error_line(err)
    for text in expect:
        assert text in line, (text, line)
    assert digests(tmp_path / "in") == before
    rows = (tmp_path / "o" / "predictions.csv").read_text()
    # read ("unreliable": the small test model's reconstruction), the bad one an error
    assert "good.txt" in rows and ",error," in rows
    assert ",ok," in rows or ",unreliable," in rows


@pytest.mark.parametrize(
    ("name", "values", "expect"),
    [
        ("constant.txt", np.full(600, 0.25), "the spectrum is constant; there is no line to read"),
        ("few.txt", None, "only 10 finite points; need at least 16"),
    ],
)
def test_unusable_spectrum_in_infer(ckpt, tmp_path, capsys, name, values, expect):
    if values is None:  # fewer points than the preparation needs
        field = np.linspace(*AXIS, 10)
        path = _text_spectrum(tmp_path / "in", name, field, _line(field))
    else:
        path = _text_spectrum(tmp_path / "in", name, values=values)
    before = digests(tmp_path / "in")
    status = infer.main(
        [str(path), "--ckpt", str(ckpt), "--out", str(tmp_path / "o"), "--no-plots"]
    )
    line = one_error_line(capsys.readouterr().err)
    assert status == 1
    assert name in line and expect in line, line
    assert digests(tmp_path / "in") == before


def test_sweep_outside_the_model_window_is_a_row_error(ckpt, tmp_path, capsys):
    field = np.linspace(5000.0, 5200.0, 600)
    path = _text_spectrum(tmp_path, "far.txt", field, dysonian(field, 5100.0, 20.0, 1.0, "plate"))
    status = infer.main(
        [str(path), "--ckpt", str(ckpt), "--out", str(tmp_path / "o"), "--no-plots"]
    )
    line = one_error_line(capsys.readouterr().err)
    assert status == 1
    assert "far.txt" in line and "5000.00-5200.00 G does not overlap the model's window" in line


# --------------------------------------------------------------------------- handled, not errors
def test_descending_field_axis_gives_the_ascending_prediction(ckpt, tmp_path, capsys):
    field = np.linspace(*AXIS, 600)
    up = _text_spectrum(tmp_path, "up.txt", field, _line(field))
    down = _text_spectrum(tmp_path, "down.txt", field[::-1], _line(field)[::-1])
    assert read_spectrum(down).sweep_direction == "down"
    rows = infer.infer_files([up, down], ckpt, tmp_path / "o", plots=False, quiet=True)
    assert [r["status"] != "error" for r in rows] == [True, True]
    for name in ("B0", "dB", "p"):
        assert rows[0][name] == pytest.approx(rows[1][name], rel=1e-9, abs=1e-12), name
    assert rows[0]["coverage"] == rows[1]["coverage"] == 1.0


def test_other_field_axis_is_resampled_with_a_coverage_warning(ckpt, tmp_path, capsys):
    """A file measured on another axis: resampled onto the model's, partial sweep flagged."""
    field = np.linspace(3300.0, 3500.0, 1000)  # the model's window is 3256.0-3455.9 G
    path = _text_spectrum(tmp_path, "shifted.txt", field, _line(field))
    status = infer.main(
        [str(path), "--ckpt", str(ckpt), "--out", str(tmp_path / "o"), "--no-plots"]
    )
    err = capsys.readouterr().err
    assert status == 0 and "Traceback" not in err
    coverage = float(np.mean(np.linspace(*AXIS, TINY_N_POINTS) >= 3300.0))
    assert f"covers only {100 * coverage:.1f} % of the model's window 3256.00-3455.90 G" in err
