"""Tests for dysonian_pl.readers: real files from shared/data/real_spectra and synthetic broken ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dysonian_pl.readers import Spectrum, SpectrumFileError, read_all_slices, read_spectrum

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_spectra"
FIXTURES = Path(__file__).resolve().parent / "data" / "readers"
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real spectra folder {REAL} absent (shared/ not beside the repo)"
)

# (folder, file) -> (format, n_points, first field G, last field G, frequency GHz or None)
# From the PROVENANCE.md tables; every file of every pair is listed.
_PAIRS = {
    ("easyspin-eprfiles", ("strong1.dsc", "strong1.dta")): ("BES3T", 1024, 3375.0, 3425.0, 9.58667),
    ("easyspin-eprfiles", ("strong1esp.par", "strong1esp.spc")): (
        "ESP",
        1024,
        3375.0,
        3425.0,
        9.58667,
    ),
    ("easyspin-eprfiles", ("esp.par", "esp.spc")): ("ESP", 8192, 3463.0, 3513.0, 9.770268),
    ("easyspin-eprfiles", ("win.par", "win.spc")): ("WinEPR", 8192, 3463.0, 3513.0, 9.770268),
    ("easyspin-eprfiles", ("bes3tint.dsc", "bes3tint.dta")): (
        "BES3T",
        1024,
        200.0,
        14200.0,
        34.2773,
    ),
    ("easyspin-eprfiles", ("be3tintlit.dsc", "be3tintlit.dta")): (
        "BES3T",
        1024,
        200.0,
        14200.0,
        34.2773,
    ),
    ("easyspin-eprfiles", ("PNOX120DB.PAR", "PNOX120DB.SPC")): (
        "ESP",
        1024,
        3421.094,
        3471.094,
        9.654288,
    ),
    ("cwepr-jmr2022", ("LiLiF-X.DSC", "LiLiF-X.DTA")): (
        "BES3T",
        2048,
        3511.0,
        3530.990234,
        9.843225,
    ),
    ("cwepr-jmr2022", ("LiLiF-Q.DSC", "LiLiF-Q.DTA")): (
        "BES3T",
        1024,
        12204.0,
        12223.980469,
        34.22606,
    ),
    ("cwepr-jmr2022", ("Sample-X.DSC", "Sample-X.DTA")): (
        "BES3T",
        4096,
        3415.0,
        3614.951172,
        9.836148,
    ),
    ("cwepr-jmr2022", ("Sample-Q.DSC", "Sample-Q.DTA")): (
        "BES3T",
        2048,
        12132.0,
        12281.926758,
        34.21958,
    ),
    ("cwepr-testdata", ("BDPA-1DFieldSweep.DSC", "BDPA-1DFieldSweep.DTA")): (
        "BES3T",
        3000,
        3501.0,
        3531.0,
        9.852145,
    ),
    ("cwepr-testdata", ("BDPA-2DFieldPower.DSC", "BDPA-2DFieldPower.DTA")): (
        "BES3T",
        2999,
        3501.0,
        3531.0,
        9.852287,
    ),
    ("cwepr-testdata", ("ESP.par", "ESP.spc")): ("ESP", 1024, 3394.988, 3494.988, None),
    ("cwepr-testdata", ("winepr.par", "winepr.spc")): ("WinEPR", 2048, 3450.0, 3570.0, 9.876026),
    ("cwepr-testdata", ("EMX-winEPR.par", "EMX-winEPR.spc")): (
        "WinEPR",
        1024,
        3505.0,
        3515.0,
        9.775,
    ),
}
EXPECTED = {(folder, name): exp for (folder, names), exp in _PAIRS.items() for name in names}
# companions that are not read on their own
_SIDE_FILES = {("cwepr-testdata", "BDPA-2DFieldPower.YGF")}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert isinstance(exc.value, ValueError)
    return msg


# --------------------------------------------------------------------------- real files
@needs_real
def test_every_real_data_file_is_covered():
    on_disk = {
        (p.parent.name, p.name)
        for p in REAL.glob("*/*")
        if p.is_file() and p.suffix.lower() not in (".md", ".info")
    }
    assert on_disk == set(EXPECTED) | _SIDE_FILES


@needs_real
@pytest.mark.parametrize("folder,name", sorted(EXPECTED), ids=lambda v: str(v))
def test_real_file(folder, name):
    fmt, n, first, last, freq = EXPECTED[(folder, name)]
    s = read_spectrum(REAL / folder / name)
    assert isinstance(s, Spectrum)
    assert s.source_format == fmt
    assert s.n_points == n == s.intensity.shape[0]
    assert s.field.dtype == np.float64 and s.intensity.dtype == np.float64
    assert s.field[0] == pytest.approx(first, abs=1e-5)
    assert s.field[-1] == pytest.approx(last, abs=1e-5)
    assert s.sweep_direction == "up"
    assert np.all(np.isfinite(s.intensity)) and np.ptp(s.intensity) > 0
    if freq is None:
        assert s.frequency_ghz is None
    else:
        assert s.frequency_ghz == pytest.approx(freq, rel=1e-9)
    assert s.metadata  # raw header kept


@needs_real
def test_strong1_metadata_and_companion_case():
    s = read_spectrum(REAL / "easyspin-eprfiles" / "strong1.dsc")
    assert s.title == "cw:strong-pitch"
    assert s.modulation_amplitude_g == pytest.approx(1.0)
    assert s.power_mw == pytest.approx(20.02)
    assert s.metadata["XPTS"] == "1024" and s.metadata["BSEQ"] == "BIG"
    assert s.notes == ()
    # upper-case pair, reached from either file
    a = read_spectrum(REAL / "easyspin-eprfiles" / "PNOX120DB.PAR")
    b = read_spectrum(REAL / "easyspin-eprfiles" / "PNOX120DB.SPC")
    assert np.array_equal(a.intensity, b.intensity)


@needs_real
def test_pnox_assumes_50_gauss_width():
    s = read_spectrum(REAL / "easyspin-eprfiles" / "PNOX120DB.SPC")
    assert s.field[0] == pytest.approx(3421.094) and s.field[-1] == pytest.approx(3471.094)
    assert any("HSW = 50 G" in n for n in s.notes)
    assert s.modulation_amplitude_g == pytest.approx(2.511886)


@needs_real
def test_bdpa_2d_slices():
    path = REAL / "cwepr-testdata" / "BDPA-2DFieldPower.DSC"
    slices = read_all_slices(path)
    assert len(slices) == 14
    assert all(s.n_points == 2999 for s in slices)
    powers = [s.power_mw for s in slices]  # from the .YGF companion, 10 dB .. 49 dB attenuation
    assert powers[0] == pytest.approx(20.0) and powers[-1] == pytest.approx(0.002518, rel=1e-3)
    assert np.all(np.diff(powers) < 0)
    assert slices[3].metadata["slice_index"] == "3"
    assert any("slice 3 of 14" in n for n in slices[3].notes)
    assert np.array_equal(read_spectrum(path, slice_index=3).intensity, slices[3].intensity)
    assert not np.array_equal(slices[0].intensity, slices[13].intensity)
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path, slice_index=None)
    assert "14 slices" in _one_line(exc)
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path, slice_index=14)
    assert "out of range" in _one_line(exc)
    assert len(read_all_slices(REAL / "easyspin-eprfiles" / "strong1.dsc")) == 1


@needs_real
def test_identity_strong1_bes3t_vs_esp_exact():
    d = REAL / "easyspin-eprfiles"
    a = read_spectrum(d / "strong1.dta")
    b = read_spectrum(d / "strong1esp.spc")
    # exact: no rounding needed (the DTA holds integer-valued float64s)
    assert np.array_equal(a.intensity * 1e5, b.intensity)
    assert np.array_equal(a.field, b.field)


@needs_real
def test_identity_esp_vs_winepr():
    d = REAL / "easyspin-eprfiles"
    e = read_spectrum(d / "esp.spc").intensity  # big-endian int32
    w = read_spectrum(d / "win.spc").intensity  # little-endian float32; same scale, no factor
    assert np.corrcoef(e, w)[0, 1] > 0.99999
    diff = w - e
    assert np.abs(diff).max() < 1.0
    # win = esp + a constant fractional offset, with a 1-count step: exactly two values 1 apart
    levels = np.unique(np.round(diff, 5))
    assert levels.size == 2 and levels[1] - levels[0] == pytest.approx(1.0, abs=1e-5)


@needs_real
def test_identity_bes3t_int_vs_float_lit():
    d = REAL / "easyspin-eprfiles"
    i = read_spectrum(d / "bes3tint.dsc").intensity  # BIG, int32
    f = read_spectrum(d / "be3tintlit.dsc").intensity  # LIT, float32
    assert np.abs(i - f).max() < 1.0
    assert np.array_equal(i, np.trunc(f))  # truncation toward zero, exactly


# --------------------------------------------------------------------------- synthetic BES3T
def _dsc(**over) -> str:
    keys = {
        "BSEQ": "BIG",
        "IKKF": "REAL",
        "XTYP": "IDX",
        "YTYP": "NODATA",
        "IRFMT": "D",
        "XPTS": "1024",
        "XMIN": "3375.000000",
        "XWID": "50.000000",
        "TITL": "'synthetic test'",
        "XUNI": "'G'",
        "MWFQ": "9.5e+09",
        "ModAmp": "0.100 G",
        "Power": "2.000 mW",
    }
    keys.update(over)
    lines = ["#DESC\t1.2 * DESCRIPTOR INFORMATION", "*", "*\tcomment"]
    lines += [f"{k}\t{v}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"


def _write_bes3t(tmp: Path, name: str, data: np.ndarray | bytes, **over) -> Path:
    dsc = tmp / f"{name}.DSC"
    dsc.write_text(_dsc(**over))
    (tmp / f"{name}.DTA").write_bytes(data if isinstance(data, bytes) else data.tobytes())
    return dsc


def test_bes3t_synthetic_roundtrip_and_frozen(tmp_path):
    y = np.sin(np.linspace(0, 6, 1024))
    s = read_spectrum(_write_bes3t(tmp_path, "x", y.astype(">f8")))
    assert np.array_equal(s.intensity, y)
    assert s.title == "synthetic test" and s.frequency_ghz == pytest.approx(9.5)
    assert s.modulation_amplitude_g == pytest.approx(0.1) and s.power_mw == pytest.approx(2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.title = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "bseq,irfmt,dtype",
    [
        ("LIT", "D", "<f8"),
        ("BIG", "F", ">f4"),
        ("LIT", "I", "<i4"),
        ("BIG", "S", ">i2"),
        ("LIT", "C", "i1"),
    ],
)
def test_bes3t_number_formats(tmp_path, bseq, irfmt, dtype):
    y = np.arange(-50, 50, dtype=np.float64)
    path = _write_bes3t(tmp_path, "f", y.astype(dtype), BSEQ=bseq, IRFMT=irfmt, XPTS="100")
    s = read_spectrum(path)
    assert np.array_equal(s.intensity, y) and s.intensity.dtype == np.float64


def test_bes3t_complex_takes_real_part(tmp_path):
    z = np.empty(200, dtype=">f8")
    z[0::2], z[1::2] = np.arange(100), -1000.0
    s = read_spectrum(_write_bes3t(tmp_path, "c", z, IKKF="CPLX", XPTS="100"))
    assert np.array_equal(s.intensity, np.arange(100.0))
    assert any("complex data: real part" in n for n in s.notes)


def test_bes3t_mT_axis_and_modamp(tmp_path):
    path = _write_bes3t(
        tmp_path, "m", np.zeros(11, ">f8") + 1, XPTS="11", XMIN="337.5", XWID="5", XUNI="'mT'"
    )
    path.write_text(path.read_text().replace("ModAmp\t0.100 G", "ModAmp\t0.01 mT"))
    s = read_spectrum(path)
    assert s.field[0] == pytest.approx(3375.0) and s.field[-1] == pytest.approx(3425.0)
    assert s.modulation_amplitude_g == pytest.approx(0.1)


def test_bes3t_unsupported_unit(tmp_path):
    path = _write_bes3t(tmp_path, "u", np.ones(4, ">f8"), XPTS="4", XUNI="'MHz'")
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    assert "MHz" in _one_line(exc) and "mT" in str(exc.value)


def test_bes3t_xgf_axis_and_line_continuation(tmp_path):
    path = _write_bes3t(tmp_path, "g", np.ones(5, ">f8"), XPTS="5", XTYP="IGD")
    path.write_text(path.read_text() + "TITL2\t'first half \\\n second half'\n")
    axis = np.array([3400.0, 3399.0, 3397.5, 3396.0, 3390.0])
    (tmp_path / "g.xgf").write_bytes(axis.astype(">f8").tobytes())
    s = read_spectrum(tmp_path / "g.DTA")
    assert np.array_equal(s.field, axis) and s.sweep_direction == "down"
    assert s.metadata["TITL2"] == "first half second half"


def test_truncated_dta(tmp_path):
    path = _write_bes3t(tmp_path, "strong1", np.zeros(1000, ">f8"))
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    msg = _one_line(exc)
    assert msg.startswith("strong1.DTA:") and "8000 bytes" in msg and "needs 8192" in msg
    assert "XPTS=1024" in msg and "IRFMT=D" in msg


def test_huge_header_is_a_clean_error(tmp_path):
    path = _write_bes3t(tmp_path, "huge", np.zeros(16, ">f8"), XPTS="2000000000")
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    assert "16000000000" in _one_line(exc)


def test_missing_companion(tmp_path):
    (tmp_path / "x.DSC").write_text(_dsc())
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / "x.DSC")
    msg = _one_line(exc)
    assert msg.startswith("x.DSC:") and "x.DTA not found" in msg and ".dta" in msg
    (tmp_path / "y.spc").write_bytes(b"\0" * 16)
    with pytest.raises(SpectrumFileError, match="parameter file y.par not found"):
        read_spectrum(tmp_path / "y.spc")


def test_file_not_found(tmp_path):
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / "nothing.DSC")
    assert _one_line(exc).startswith("nothing.DSC: file not found")


def test_unknown_extension(tmp_path):
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / "foo.xyz")
    msg = _one_line(exc)
    assert msg.startswith("foo.xyz:") and "'.xyz'" in msg and ".DSC/.DTA" in msg


@pytest.mark.parametrize("name", ["e.DSC", "e.txt", "e.par"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    (tmp_path / "e.DTA").write_bytes(b"\0" * 8)
    (tmp_path / "e.spc").write_bytes(b"\0" * 8)
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / name)
    assert "empty" in _one_line(exc)


def test_empty_dta(tmp_path):
    path = _write_bes3t(tmp_path, "z", b"")
    with pytest.raises(SpectrumFileError, match="empty"):
        read_spectrum(path)


@pytest.mark.parametrize(
    "over,expect",
    [
        ({"IRFMT": "Q"}, "D (float64), F (float32), I (int32), S (int16), C (int8)"),
        ({"BSEQ": "MIDDLE"}, "expected BIG or LIT"),
        ({"XPTS": None}, "no XPTS"),
        ({"XPTS": "12.5"}, "XPTS"),
        ({"IKKF": "IMAG"}, "REAL or CPLX"),
    ],
)
def test_bad_header_values(tmp_path, over, expect):
    path = _write_bes3t(tmp_path, "b", np.zeros(1024, ">f8"), **over)
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    assert expect in _one_line(exc)


def test_nan_values(tmp_path):
    y = np.zeros(1024)
    y[[3, 7, 9]] = np.nan
    y[11] = np.inf
    path = _write_bes3t(tmp_path, "n", y.astype(">f8"))
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    msg = _one_line(exc)
    assert "4 non-finite" in msg and "3 NaN" in msg and "1 Inf" in msg


# --------------------------------------------------------------------------- synthetic ESP/WinEPR
def test_winepr_cr_only_par(tmp_path):
    par = "DOS  Format\rANZ 64\rGST 3300.000000\rGSI 100.000000\rJUN G\rMF  9.4\rMP  2.0e-001\rRMA 0.5\r"
    (tmp_path / "w.PAR").write_bytes(par.encode())
    y = np.linspace(-1, 1, 64)
    (tmp_path / "w.spc").write_bytes(y.astype("<f4").tobytes())
    s = read_spectrum(tmp_path / "w.PAR")
    assert s.source_format == "WinEPR" and s.n_points == 64
    assert np.allclose(s.intensity, y, atol=1e-7)
    assert s.field[0] == 3300.0 and s.field[-1] == 3400.0
    assert s.frequency_ghz == 9.4 and s.power_mw == pytest.approx(0.2)
    assert s.modulation_amplitude_g == 0.5


def test_esp_mT_hcf_hsw_and_size_check(tmp_path):
    (tmp_path / "e.par").write_text("JSS 0\r\nHCF 340.0\r\nHSW 5.0\r\nJUN mT\r\nRES 32\r\n")
    y = np.arange(32, dtype=np.int64) - 16
    (tmp_path / "e.spc").write_bytes(y.astype(">i4").tobytes())
    s = read_spectrum(tmp_path / "e.spc")
    assert s.source_format == "ESP" and np.array_equal(s.intensity, y)
    assert s.field[0] == pytest.approx(3375.0) and s.field[-1] == pytest.approx(3425.0)
    (tmp_path / "e.spc").write_bytes(y[:30].astype(">i4").tobytes())
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / "e.spc")
    assert "120 bytes" in _one_line(exc) and "needs 128" in str(exc.value)


def test_esp_no_field_range(tmp_path):
    (tmp_path / "r.par").write_text("JSS 0\nJUN G\n")
    (tmp_path / "r.spc").write_bytes(b"\0\0\0\1" * 8)
    with pytest.raises(SpectrumFileError, match="no field range"):
        read_spectrum(tmp_path / "r.par")


# --------------------------------------------------------------------------- text
def test_text_descending_in_file_order():
    s = read_spectrum(FIXTURES / "xepr_export_down.txt")
    assert s.source_format == "text" and s.n_points == 5
    assert np.array_equal(s.field, [3430.0, 3420.0, 3410.0, 3400.0, 3390.0])
    assert np.array_equal(s.intensity, [-0.5, -1.0, 0.0, 1.0, 0.5])
    assert s.sweep_direction == "down"


def test_winepr_asc_export_in_mT():
    s = read_spectrum(FIXTURES / "winepr_export.asc")
    assert np.allclose(s.field, [3390.0, 3395.0, 3400.0, 3405.0, 3410.0])
    assert s.sweep_direction == "up" and s.notes == ()


def test_text_roundtrip_csv_mT(tmp_path):
    field_mT = np.linspace(335.0, 345.0, 201)
    y = np.gradient(1.0 / (1.0 + ((field_mT - 340.0) / 0.3) ** 2))
    path = tmp_path / "export.CSV"
    with path.open("w") as fh:
        fh.write("# Xepr ASCII export\nindex,Field [mT],Intensity []\n")
        for i, (b, v) in enumerate(zip(field_mT, y, strict=True)):
            fh.write(f"{i},{b:.6f},{v:.12e}\n")
    s = read_spectrum(path)
    assert np.allclose(s.field, field_mT * 10.0, atol=1e-5)
    assert np.allclose(s.intensity, y, rtol=1e-11, atol=1e-15)
    assert s.metadata["field_unit"] == "mT"


def test_text_two_columns_default_gauss(tmp_path):
    path = tmp_path / "two.dat"
    path.write_text("3400 1.0\n3401 2.0\n3402 3.0\n")
    s = read_spectrum(path)
    assert np.array_equal(s.field, [3400.0, 3401.0, 3402.0])
    assert "no field unit in header: field assumed to be in gauss" in s.notes
    assert s.field_unit_assumed


def test_a_field_in_oersted_is_read_as_gauss(tmp_path):
    path = tmp_path / "oe.txt"
    path.write_text("H (Oe)\tI\n3400\t1\n3401\t-1\n3402\t0.5\n")
    s = read_spectrum(path, field_unit="mT")  # the file names its unit: it wins
    assert np.array_equal(s.field, [3400.0, 3401.0, 3402.0]) and not s.field_unit_assumed
    assert s.metadata["field_unit"] == "Oe"


def test_field_unit_for_files_that_name_none(tmp_path):
    """field_unit says what a file without a unit is in; a unit the file names wins."""
    bare = tmp_path / "bare.txt"
    bare.write_text("337.0\t1.0\n337.5\t-1.0\n338.0\t0.5\n")
    s = read_spectrum(bare, field_unit="mT")
    assert np.allclose(s.field, [3370.0, 3375.0, 3380.0]) and not s.field_unit_assumed
    assert "no field unit in header: field read in mT as asked (field_unit)" in s.notes
    assert read_spectrum(bare, field_unit="t").field[0] == pytest.approx(3.37e6)
    named = tmp_path / "named.txt"
    named.write_text("Field [G]\tIntensity\n3370\t1\n3375\t-1\n")
    s = read_spectrum(named, field_unit="mT")
    assert np.array_equal(s.field, [3370.0, 3375.0]) and not s.field_unit_assumed
    # BES3T without XUNI, and with it
    y = np.zeros(11, ">f8") + 1
    dsc = _write_bes3t(tmp_path, "nox", y, XPTS="11", XMIN="337.5", XWID="5", XUNI=None)
    s = read_spectrum(dsc)  # gauss, the format's default: a note, not flagged
    assert s.field[0] == pytest.approx(337.5) and not s.field_unit_assumed
    assert "no XUNI in descriptor: field assumed to be in gauss" in s.notes
    s = read_spectrum(dsc, field_unit="mT")
    assert s.field[-1] == pytest.approx(3425.0) and not s.field_unit_assumed
    [only] = read_all_slices(dsc, field_unit="mT")
    assert only.field[0] == pytest.approx(3375.0)
    dsc = _write_bes3t(tmp_path, "g", y, XPTS="11", XMIN="3375", XWID="50")
    assert read_spectrum(dsc, field_unit="mT").field[0] == pytest.approx(3375.0)
    with pytest.raises(
        ValueError, match="field_unit 'mG' is not a field unit; expected one of G, mT, T"
    ):
        read_spectrum(bare, field_unit="mG")


@pytest.mark.parametrize(
    "content,expect",
    [
        ("Field [G]\tIntensity\n3400\t1\n3401\tnan\n3402\t3\n", "1 non-finite"),
        ("only a header\n", "no numeric data rows"),
        ("3400 1\n3401 2 3\n", "columns"),
        ("3400 1\n3401 2\ntrailer text\n", "not numeric"),
    ],
)
def test_text_errors(tmp_path, content, expect):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    assert expect in _one_line(exc) and str(exc.value).startswith("bad.txt:")


# --------------------------------------------------------------------------- formats seen in real exports
def test_esp_2d_slices_and_time_sweep_refused(tmp_path):
    par = (
        "DOS  Format\rANZ 12\rJSS 4096\rSSX 4\rSSY 3\rXXLB 3400.0\rXXWI 30.0\rXYLB 10.0\r"
        "XYWI 20.0\rXXUN G\rXYUN mW\rJEX field-sweep\rJEY mw-power-sweep\rMF  9.5\r"
    )
    (tmp_path / "d.par").write_bytes(par.encode())
    y = np.arange(12, dtype=np.float64).reshape(3, 4)
    (tmp_path / "d.spc").write_bytes(y.astype("<f4").tobytes())
    slices = read_all_slices(tmp_path / "d.spc")
    assert len(slices) == 3
    assert np.array_equal(slices[2].intensity, y[2])
    assert np.array_equal(slices[0].field, [3400.0, 3410.0, 3420.0, 3430.0])
    assert [s.power_mw for s in slices] == [10.0, 20.0, 30.0]  # y axis in mW
    assert slices[1].notes[-1] == "slice 1 of 3 (mw-power-sweep = 20 mW)"
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / "d.par", slice_index=None)
    assert "3 slices" in _one_line(exc)
    (tmp_path / "d.spc").write_bytes(y[:2].astype("<f4").tobytes())
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / "d.par")
    assert "SSX=4, SSY=3" in _one_line(exc) and "needs 48" in str(exc.value)
    (tmp_path / "t.par").write_text("DOS  Format\nANZ 4\nJSS 0\nJEX time-sweep\nRCT 10\n")
    (tmp_path / "t.spc").write_bytes(np.zeros(4, "<f4").tobytes())
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(tmp_path / "t.spc")
    assert "time-sweep" in _one_line(exc) and "not a magnetic-field sweep" in str(exc.value)


def test_bes3t_field_on_y_axis_refused_with_hint(tmp_path):
    path = _write_bes3t(
        tmp_path, "tf", np.zeros(8, ">f8"), XPTS="4", XUNI="'s'", XNAM="'Time'",
        YTYP="IDX", YPTS="2", YMIN="3400", YWID="10", YUNI="'G'",
    )  # fmt: skip
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    msg = _one_line(exc)
    assert "'Time'" in msg and "XUNI='s'" in msg and "field is the y axis" in msg


def test_text_winepr_2d_export_slices(tmp_path):
    """WinEPR's ASCII export of a 2D file: a 'Slice N' block with its own header per sweep."""
    lines = ["Filename:\tC:\\data\\x.par\t Date: 08/02/2011   Time: 09:50", ""]
    for k in range(3):
        lines += [f"Slice {k + 1}", "X [G]\tY []\tIntensity"]
        lines += [
            f"{3449.169922 + 0.05 * i:.6f}\t{k:.6f}\t{100.0 * (k + 1) + i:.6f}" for i in range(5)
        ]
        lines += ["", ""]
    path = tmp_path / "w2d.asc"
    path.write_bytes("\r\n".join(lines).encode())
    slices = read_all_slices(path)
    assert len(slices) == 3
    assert np.array_equal(
        slices[1].intensity, [200.0, 201.0, 202.0, 203.0, 204.0]
    )  # not the Y column
    assert slices[2].field[0] == pytest.approx(3449.169922)
    assert slices[2].metadata["slice_y_value"] == "2.0"
    assert np.array_equal(read_spectrum(path).intensity, slices[0].intensity)


def test_text_long_2d_table_split_by_y_column(tmp_path):
    rows = ["Index\tField [mT]\tTime [s]\tIntensity []"]
    rows += [
        f"{k * 4 + i}\t{340 + i}\t{10.0 * k}\t{1000 * k + i}" for k in range(3) for i in range(4)
    ]
    path = tmp_path / "long2d.txt"
    path.write_text("\n".join(rows) + "\n")
    slices = read_all_slices(path)
    assert len(slices) == 3 and all(s.n_points == 4 for s in slices)
    assert np.array_equal(slices[2].field, [3400.0, 3410.0, 3420.0, 3430.0])
    assert np.array_equal(slices[2].intensity, [2000.0, 2001.0, 2002.0, 2003.0])
    assert "Time [s] = 20" in slices[2].notes[-1]


def test_text_named_columns_and_no_false_slicing(tmp_path):
    path = tmp_path / "reim.csv"
    path.write_text("Field [G],Intensity_Real,Intensity_Imag\n3400,1,5\n3401,2,6\n3402,3,7\n")
    s = read_spectrum(path)
    assert np.array_equal(s.intensity, [1.0, 2.0, 3.0])
    assert len(read_all_slices(path)) == 1


@pytest.mark.parametrize(
    "content",
    [
        "Feld [mT];Intensität\n340,05;1,5e-3\n340,10;-2,0E-3\n",
        "340,05\t1,5e-3\n340,10\t-2,0E-3\n",
        "Date 08/02/2011, 12:00\nB [mT]\tdI/dB\n340,05\t1,5e-3\n340,10\t-2,0E-3\n",
    ],
)
def test_text_decimal_comma(tmp_path, content):
    path = tmp_path / "dc.txt"
    path.write_bytes(content.encode("latin-1"))
    s = read_spectrum(path)
    assert s.field[0] == pytest.approx(3400.5 if "mT" in content else 340.05)
    assert np.array_equal(s.intensity, [1.5e-3, -2.0e-3])
    assert "decimal commas read as decimal points" in s.notes


def test_text_comma_space_csv_is_not_decimal_comma(tmp_path):
    path = tmp_path / "cs.csv"
    path.write_text("3400, 1\n3401, 2\n")
    s = read_spectrum(path)
    assert np.array_equal(s.field, [3400.0, 3401.0]) and np.array_equal(s.intensity, [1.0, 2.0])
    assert not any("decimal" in n for n in s.notes)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_text_bom_and_utf16(tmp_path, encoding):
    path = tmp_path / "bom.txt"
    path.write_bytes("3400\t1\n3401\t2\n3402\t3\n".encode(encoding))
    s = read_spectrum(path)
    assert s.n_points == 3 and np.array_equal(s.field, [3400.0, 3401.0, 3402.0])


def test_winepr_par_with_bom(tmp_path):
    par = "\ufeffDOS  Format\r\nANZ 4\r\nGST 3300\r\nGSI 30\r\nJUN G\r\n"
    (tmp_path / "b.par").write_bytes(par.encode("utf-8"))
    (tmp_path / "b.spc").write_bytes(np.arange(4, dtype="<f4").tobytes())
    s = read_spectrum(tmp_path / "b.par")
    assert s.source_format == "WinEPR" and np.array_equal(s.intensity, [0.0, 1.0, 2.0, 3.0])


def test_text_time_column_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Time [us]\tIntensity\n0\t1\n1\t2\n")
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path)
    assert "'us'" in _one_line(exc) and "not a magnetic field" in str(exc.value)
