"""Reader tests on real spectrometer files that are not in shared/data/real_spectra.

The files come from the source archives of cwepr 0.5.1, epyr-tools 0.5.0 and pyepri 1.1.1
(tests/data/external/PROVENANCE.md: versions, licences, checksums, how the numbers
were checked). Every expected number below comes from the file's own header or from a
second copy of the same data, not from this reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dysonian_pl.readers import SpectrumFileError, read_all_slices, read_spectrum

EXT = Path(__file__).resolve().parent / "data" / "external"
CWEPR = EXT / "cwepr-0.5.1"
EPYR = EXT / "epyr_tools-0.5.0"
PYEPRI = EXT / "pyepri-1.1.1"

# file -> (format, points, first field G, last field G, MHz-exact frequency GHz,
#          modulation amplitude G, power mW, first intensity, last intensity)
CASES = {
    CWEPR / "test-bes3t-1D-fieldsweep.DSC": (
        "BES3T", 1000, 3461.0, 3561.0, 9.847957, 1.0, 0.6325,
        -0.06552637329186792, -0.06588431500909686,
    ),
    EPYR / "test.DSC": (
        "BES3T", 1024, 100.0, 6100.0, 9.704197, 1.0, 0.01013, -614.0, -677.0,
    ),
    PYEPRI / "fusillo-20091002-h.DSC": (
        "BES3T", 500, 333.45, 465.685, 1.086258, 0.6, 20.05,
        4470.1860000000015, 5688.1860000000015,
    ),
    PYEPRI / "phalanx-20220203-h.DSC": (
        "BES3T", 2000, 3068.3, 3787.7401, 9.559855, 3.0, 0.09991, 1201.998, -806.002,
    ),
    EPYR / "2014_03_19_MgO_300K_111_fullrotation33dB.par": (
        "WinEPR", 2048, 3000.0, 3700.0, 9.399263, 1.0, 0.1001,
        -28.12744140625, 4.87255859375,
    ),
}  # fmt: skip


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert isinstance(exc.value, SpectrumFileError)
    return msg


def _companion(path: Path) -> Path:
    other = {".DSC": ".DTA", ".par": ".spc"}[path.suffix]
    return path.with_suffix(other)


@pytest.mark.parametrize("path", sorted(CASES), ids=lambda p: p.name)
def test_external_file_numbers(path):
    fmt, n, first, last, freq, modamp, power, y0, y1 = CASES[path]
    for p in (path, _companion(path)):  # same answer from either file of the pair
        s = read_spectrum(p)
        assert s.source_format == fmt
        assert s.n_points == n == s.intensity.shape[0]
        assert s.field.dtype == np.float64 and s.intensity.dtype == np.float64
        assert s.field[0] == pytest.approx(first, abs=1e-9)
        assert s.field[-1] == pytest.approx(last, abs=1e-9)
        assert np.all(np.diff(s.field) > 0) and s.sweep_direction == "up"
        assert s.frequency_ghz == pytest.approx(freq, rel=1e-9)
        assert s.modulation_amplitude_g == pytest.approx(modamp, rel=1e-9)
        assert s.power_mw == pytest.approx(power, rel=1e-9)
        assert s.intensity[0] == pytest.approx(y0, rel=1e-12)
        assert s.intensity[-1] == pytest.approx(y1, rel=1e-12)


def test_bes3t_metadata_and_no_notes():
    s = read_spectrum(CWEPR / "test-bes3t-1D-fieldsweep.DTA")
    assert s.title == "Some sample: Field Sweep"
    assert s.notes == ()
    assert s.metadata["XPTS"] == "1000" and s.metadata["IRFMT"] == "D"
    # step = XWID / (XPTS - 1), as in eprload
    assert np.diff(s.field) == pytest.approx(np.full(999, 100.0 / 999), rel=1e-9)
    e = read_spectrum(EPYR / "test.DSC")
    assert e.title == "Er"
    assert np.array_equal(e.intensity, np.round(e.intensity))  # integer-valued float64
    assert e.intensity.sum() == -751236.0


def test_epyr_csv_export_identical_to_bes3t():
    """epyr-tools' CSV export of test.DSC: '#' header, then 'Abscissa (G),Intensity (a.u.)'."""
    a = read_spectrum(EPYR / "test.DSC")
    b = read_spectrum(EPYR / "130406SB_CaWO4_Er_CW_5K_20.csv")
    assert b.source_format == "text" and b.metadata["field_unit"] == "G"
    assert b.notes == ()  # unit found in the column name, no index column guessed
    assert np.array_equal(a.field, b.field)
    assert np.array_equal(a.intensity, b.intensity)


def test_pyepri_float32_copies_match():
    s = read_spectrum(PYEPRI / "fusillo-20091002-h.DTA")
    h = np.load(PYEPRI / "fusillo-20091002-h.npy")
    b = np.load(PYEPRI / "fusillo-20091002-B.npy")
    assert h.dtype == np.float32 and b.dtype == np.float32
    assert np.array_equal(s.intensity.astype(np.float32), h)
    assert np.array_equal(s.field.astype(np.float32), b)


def test_bes3t_2d_field_delay_slices_from_ygf():
    path = CWEPR / "BDPA-2DFieldDelay.DSC"
    slices = read_all_slices(path)
    assert len(slices) == 10
    times = [float(s.metadata["slice_y_value"]) for s in slices]
    assert times == pytest.approx(
        [0.0, 33.35, 66.08, 98.86, 131.67, 164.45, 197.17, 229.91, 262.69, 295.49]
    )
    assert all(s.metadata["slice_y_unit"] == "s" for s in slices)
    for s in slices:
        assert s.n_points == 2999
        assert s.field[0] == 3501.0 and s.field[-1] == pytest.approx(3531.0, abs=1e-9)
        assert s.frequency_ghz == pytest.approx(9.851583, rel=1e-9)
        assert s.power_mw == pytest.approx(0.6325)  # a time series: power stays the header's
    assert slices[0].intensity[0] == pytest.approx(-0.13393402099609375, rel=1e-12)
    assert slices[0].intensity[-1] == pytest.approx(-0.13248443603515625, rel=1e-12)
    assert slices[9].intensity[0] == pytest.approx(-0.12997437, rel=1e-7)
    assert slices[9].intensity[-1] == pytest.approx(-0.11639404, rel=1e-7)
    assert "slice 9 of 10 (Time = 295.49 s)" in slices[9].notes
    assert np.array_equal(read_spectrum(path.with_suffix(".DTA"), 9).intensity, slices[9].intensity)
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path, slice_index=None)
    assert "10 slices" in _one_line(exc)


def test_winepr_2d_angle_series():
    """WinEPR 2D (JSS 4096, SSX 2048 x SSY 37): one field sweep per goniometer angle."""
    path = EPYR / "2014_03_19_MgO_300K_111_fullrotation33dB.spc"
    slices = read_all_slices(path)
    assert len(slices) == 37
    angles = [float(s.metadata["slice_y_value"]) for s in slices]
    assert angles == pytest.approx(np.arange(0.0, 181.0, 5.0))
    assert all(s.metadata["slice_y_unit"] == "deg" for s in slices)
    assert "slice 18 of 37 (angle-sweep = 90 deg)" in slices[18].notes
    assert all(s.n_points == 2048 and s.source_format == "WinEPR" for s in slices)
    assert all(s.field[0] == 3000.0 and s.field[-1] == 3700.0 for s in slices)
    assert slices[18].intensity[0] == 14.4326171875
    assert slices[36].intensity[-1] == 0.189453125
    # the slices are contiguous runs of SSX points: the file is exactly 37 x 2048 float32
    raw = np.fromfile(path, dtype="<f4").reshape(37, 2048)
    assert np.array_equal(np.array([s.intensity for s in slices]), raw)
    # neighbouring angles are alike, 90 degrees apart much less so
    assert np.corrcoef(slices[0].intensity, slices[1].intensity)[0, 1] > 0.95
    assert np.corrcoef(slices[0].intensity, slices[18].intensity)[0, 1] < 0.8
    assert np.array_equal(
        read_spectrum(path.with_suffix(".par"), -1).intensity, slices[36].intensity
    )
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path, slice_index=37)
    assert "out of range" in _one_line(exc) and "37 slice" in str(exc.value)


def test_time_sweep_bes3t_is_refused():
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(CWEPR / "BDPA-1DTimeSweep.DTA")
    msg = _one_line(exc)
    assert msg.startswith("BDPA-1DTimeSweep.DSC:")
    assert "'Time'" in msg and "XUNI='s'" in msg and "not a magnetic field" in msg


def test_time_axis_text_export_is_refused():
    """A pulse (Rabi) CSV whose abscissa is in ns must not be read as a field in gauss."""
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(EPYR / "2024_08_CaWO4171Yb_rabi_6K_6724G_18dB.csv")
    msg = _one_line(exc)
    assert msg.startswith("2024_08_CaWO4171Yb_rabi_6K_6724G_18dB.csv:")
    assert "'Abscissa (ns)'" in msg and "'ns'" in msg and "not a magnetic field" in msg


# Magnettech MS-5000 (ESRStudio) .xml files from cwepr 0.5.1's test data. The numbers are
# cwepr 0.5.1's own MagnettechXMLImporter's (run once beside this reader, 2026-11-25:
# field and intensity identical, max difference 0), and the file's recipe.
# file -> (points, first field G, last field G, first y, last y, sum of y, Bfrom, Bto (G),
#          MwFreq GHz, modulation G, power mW, recipe type)
MAGNETTECH = {
    CWEPR / "test-magnettech.xml": (
        15342, 3360.958486184909, 3404.2136483027134, 2.809082784877244,
        -1.8805996232769786, 98647.40828720298, 3360.95684448245, 3404.21648992911,
        9.48958423609322, 0.01, 1.0, "single",
    ),
    CWEPR / "20201216_120054089_goniometersweep-testdata_F_gon_10dg.xml": (
        15400, 3350.002624162817, 3399.9982030754463, -4.831735323735707,
        4.592345854147187, 35203.500045946086, 3350.0, 3400.0,
        9.49276843185336, 0.5, 0.1, "goniometric",
    ),
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(MAGNETTECH), ids=lambda p: p.name[-20:])
def test_magnettech_xml_as_cwepr_reads_it(path):
    n, first, last, y0, y1, total, bfrom, bto, freq, modamp, power, recipe = MAGNETTECH[path]
    s = read_spectrum(path)
    assert s.source_format == "Magnettech" and s.n_points == n
    assert s.field[0] == pytest.approx(first, abs=1e-9)
    assert s.field[-1] == pytest.approx(last, abs=1e-9)
    assert s.intensity[0] == pytest.approx(y0, rel=1e-12)
    assert s.intensity[-1] == pytest.approx(y1, rel=1e-12)
    assert s.intensity.sum() == pytest.approx(total, rel=1e-12)
    assert bfrom <= s.field.min() and s.field.max() <= bto
    assert s.sweep_direction == "up"
    assert s.frequency_ghz == freq
    assert s.modulation_amplitude_g == pytest.approx(modamp, rel=1e-12)  # mT -> G
    assert s.power_mw == power
    assert s.metadata["RecipeType"] == recipe


# Adani e-Spinoza JSON, EasySpin's two test files (transcribed: PROVENANCE.md). The
# reference here is eprload's own formula, computed in the test, and the lines' places.
ADANI = EXT / "easyspin-adani"


def _zero_crossing(field: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Field where a first-derivative line crosses zero between its two extrema."""
    m = (field > lo) & (field < hi)
    x, v = field[m], y[m]
    a, b = sorted((int(np.argmax(v)), int(np.argmin(v))))
    seg = v[a : b + 1]
    k = int(np.flatnonzero(np.diff(np.sign(seg)) != 0)[0])
    return float(x[a + k] + (x[a + k + 1] - x[a + k]) * seg[k] / (seg[k] - seg[k + 1]))


def test_adani_1d_json_as_eprload_reads_it():
    import json

    path = ADANI / "1d.json"
    s = read_spectrum(path, slice_index=None)
    assert s.source_format == "Adani" and s.n_points == 1000
    assert s.field[0] == pytest.approx(3300.0) and s.field[-1] == pytest.approx(3450.0)
    assert s.frequency_ghz == pytest.approx(9.438158, rel=1e-12)
    doc = json.loads(path.read_text())
    frames = np.array([p["Points"] for p in doc["Values"][0]["Values"]])
    eprload = frames @ np.sin(2 * np.pi * np.arange(14) / 14 + doc["Phase"])
    # the same line shape as eprload's projection, up to a scale (the signal's own phase)
    assert np.corrcoef(eprload, s.intensity)[0, 1] > 0.9998
    centres = [_zero_crossing(s.field, s.intensity, lo, lo + 25) for lo in (3318, 3367, 3405)]
    np.testing.assert_allclose(centres, [3330.97, 3379.09, 3417.23], atol=0.05)
    assert "33 degrees from the stored Phase=0" in s.notes[0]


def test_adani_mn_json_two_values_per_point():
    s = read_spectrum(ADANI / "Mn.json")
    assert s.n_points == 1000 and s.frequency_ghz == pytest.approx(9.383722, rel=1e-12)
    assert s.field[0] == pytest.approx(3263.7546644344627)
    low, high = (_zero_crossing(s.field, s.intensity, lo, lo + 30) for lo in (3280, 3368))
    # the two central Mn2+ lines, 8.65 mT apart (Mn2+:MgO, A ~ 8.7 mT)
    assert low == pytest.approx(3295.77, abs=0.05) and high == pytest.approx(3382.25, abs=0.05)
    assert "18 degrees from the stored PhaseRadians=2.68432" in s.notes[0]
    # signed by cos(phi) I + sin(phi) Q: the low-field lobe positive, the usual orientation
    m = (s.field > 3280) & (s.field < 3310)
    assert np.argmax(s.intensity[m]) < np.argmin(s.intensity[m])


def test_ciqtek_1d_epr_nitroxide_triplet():
    # EasySpin's CIQTEK_1D.epr (transcribed: PROVENANCE.md): a nitroxide triplet at X band
    s = read_spectrum(EXT / "easyspin-ciqtek" / "CIQTEK_1D.epr", slice_index=None)
    assert s.source_format == "CIQTEK" and s.n_points == 1024
    assert s.field[0] == 3440.6 and s.field[-1] == 3540.6  # StartField, StopField
    assert s.frequency_ghz == 9.80270021012544  # the trace's own freq
    assert s.power_mw == 3.162278 and s.modulation_amplitude_g == 1.0
    assert s.intensity[:3].tolist() == [0.0, 0.013782, 0.024655]
    lines = [_zero_crossing(s.field, s.intensity, lo, lo + 12) for lo in (3468, 3484, 3500)]
    # 14N hyperfine about 17 G; the centre line's g is the file's own "Center" 2.0066
    np.testing.assert_allclose(np.diff(lines), [16.88, 17.02], atol=0.05)
    g = 0.71447702 * 9802.70021012544 / lines[1]  # h nu / (mu_B B), nu in MHz, B in G
    assert g == pytest.approx(float(s.metadata["lineEdit_1DFieldSweep_Center"]), abs=5e-5)


def test_g_factor_matches_ciqteks_own_g_axis():
    # the CIQTEK file carries the spectrometer software's g for every field point (gData,
    # 6 decimals): dysonian_pl.lineshapes.g_factor agrees to that rounding at all 1024
    import json

    from dysonian_pl.lineshapes import g_factor

    line = json.loads((EXT / "easyspin-ciqtek" / "CIQTEK_1D.epr").read_text())["dataStore"][
        "lineDataList"
    ][0]
    field = np.array(line["ReData"])[:, 0]
    theirs = np.array(line["gData"])[:, 0]
    ours = g_factor(line["freq"], field)
    assert np.abs(ours - theirs).max() <= 5.1e-7
    assert theirs[0] == 2.035635 and ours[0] == pytest.approx(2.035635, abs=5e-7)
