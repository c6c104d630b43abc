"""Readers for the single-file vendor formats (Magnettech ESRStudio .xml, ...), on
synthetic files written here with known content, and their error messages."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import numpy as np
import pytest

from dysonian_pl.readers import SpectrumFileError, read_all_slices, read_spectrum


def _one_line_error(path: Path, *needles: str, **kw) -> str:
    with pytest.raises(SpectrumFileError) as exc:
        read_spectrum(path, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(path.name + ":"), msg
    for n in needles:
        assert n in msg, msg
    return msg


# --------------------------------------------------------------------------- #
# Magnettech
# --------------------------------------------------------------------------- #
def _b64_groups(values) -> str:
    """ESRStudio's encoding: one base64 group (12 characters) per little-endian float64."""
    return "".join(base64.b64encode(struct.pack("<d", float(v))).decode() for v in values)


def _magnettech(
    path: Path,
    *,
    field_mt=None,
    signal=None,
    b_slope=0.02,
    y_offset=0.01,
    y_slope=0.005,
    y_until=5.0,
    recipe="single",
    bhold="False",
    b_unit="mT",
    bfrom="336",
    bto="340",
    compression="Base64",
    encode=_b64_groups,
    curves=("BField", "MW_Absorption"),
    root="ESRXmlFile",
) -> tuple[np.ndarray, np.ndarray]:
    """Write an ESRStudio-like file: the field ramps 335.5 -> 340.5 mT over 5 s (BField
    every `b_slope` s); the signal is recorded every `y_slope` s from `y_offset`.
    Returns the (time, field) of the signal that a correct reader keeps."""
    t_b = np.arange(0, 5 + 1e-9, b_slope)
    field = 335.5 + t_b if field_mt is None else field_mt(t_b)
    t_y = y_offset + y_slope * np.arange(int(round((y_until - y_offset) / y_slope)) + 1)
    y = np.sin(t_y * 7.0) if signal is None else signal(t_y)
    body = {
        "BField": (
            f'<Curve Name="BField" XType="Time" YType="BField" XUnit="s" YUnit="{b_unit}" '
            f'XOffset="0" XSlope="{b_slope}" XSummations="1" Mode="Pre" '
            f'Compression="{compression}">{encode(field)}</Curve>'
        ),
        "MW_Absorption": (
            '<Curve Name="MWAbsorption (1st harm.)" XType="Time" YType="MW_Absorption" '
            f'XUnit="s" YUnit="" XOffset="{y_offset}" XSlope="{y_slope}" XSummations="1" '
            f'Mode="Pre" Compression="{compression}">{encode(y)}</Curve>'
        ),
    }
    xml = f"""\ufeff<?xml version="1.0" encoding="utf-8"?>
<{root} Version="1">
  <Data>
    <Measurement Name="synthetic" MwFreq="9.4712" XUnit="mT" YDatasource="MW_Absorption">
      <Recipe Name="synthetic" Type="{recipe}">
        <Parameters>
          <Param Name="Bfrom" Unit="{b_unit}">{bfrom}</Param>
          <Param Name="Bto" Unit="{b_unit}">{bto}</Param>
          <Param Name="Modulation" Unit="mT">0.2</Param>
          <Param Name="BHoldEnabled">{bhold}</Param>
          <Param Name="MicrowavePower" Unit="mW">3.5</Param>
          <Param Name="TempFrom" Unit="°C">5</Param>
        </Parameters>
      </Recipe>
      <DataCurves>
        {"".join(body[c] for c in curves)}
      </DataCurves>
    </Measurement>
  </Data>
</{root}>
"""
    path.write_text(xml, encoding="utf-8")
    # what a correct reader keeps: signal times inside the field record, field inside
    # Bfrom..Bto (both in the BField curve's unit here)
    f_y = np.interp(t_y, t_b, field)
    kept = (t_y <= t_b[-1]) & (f_y >= float(bfrom)) & (f_y <= float(bto))
    return f_y[kept], y[kept]


def test_magnettech_field_is_the_bfield_curve_at_the_signal_times(tmp_path):
    f = tmp_path / "scan.xml"
    field, y = _magnettech(f)
    s = read_spectrum(f)
    assert s.source_format == "Magnettech"
    # field = BField(t) interpolated at the signal's times, mT -> G, cut to Bfrom..Bto
    np.testing.assert_allclose(s.field, field * 10.0, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(s.intensity, y)
    assert s.field[0] >= 3360.0 and s.field[-1] <= 3400.0
    assert s.n_points == 801  # the signal at 0.5 ... 4.5 s (5 ms steps): 336-340 mT
    assert s.frequency_ghz == pytest.approx(9.4712)
    assert s.modulation_amplitude_g == pytest.approx(2.0)
    assert s.power_mw == pytest.approx(3.5)
    assert s.title == "synthetic" and s.metadata["RecipeType"] == "single"
    assert s.metadata["Bfrom"] == "336"
    assert not s.field_unit_assumed
    assert "outside Bfrom..Bto" in s.notes[0]
    assert read_spectrum(f, slice_index=None).n_points == 801  # a 1D file
    assert [x.n_points for x in read_all_slices(f)] == [801]


def test_magnettech_nonlinear_field_and_one_stream_base64(tmp_path):
    # a field that lags (quadratic in time): the reader interpolates the record, not linspace
    f = tmp_path / "lag.xml"
    field, y = _magnettech(
        f,
        field_mt=lambda tb: 335.5 + tb + 0.02 * tb**2,
        encode=lambda v: base64.b64encode(np.asarray(v, "<f8").tobytes()).decode(),
    )
    s = read_spectrum(f)
    np.testing.assert_allclose(s.field, field * 10.0, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(s.intensity, y)
    assert s.n_points == 731  # fewer than a linear ramp's 801: the field sweeps faster


def test_magnettech_field_in_gauss_and_signal_beyond_the_field_record(tmp_path):
    # signal recorded until 6 s, the field only until 5 s (3405 G): the last second has no
    # field reading and is dropped, not given the last field value
    f = tmp_path / "gauss.xml"
    field, y = _magnettech(
        f,
        b_unit="G",
        field_mt=lambda tb: 3355.0 + 10 * tb,
        bfrom="3300",
        bto="3500",
        y_offset=0.005,
        y_slope=0.01,
        y_until=6.0,
    )
    s = read_spectrum(f)
    np.testing.assert_allclose(s.field, field, rtol=0, atol=1e-9)
    assert s.n_points == 500 and s.field.max() < 3405.0
    assert np.all(np.diff(s.field) > 0)


@pytest.mark.parametrize(
    "kw, needles",
    [
        ({"recipe": "kinetic"}, ("Recipe Type='kinetic'", "not a magnetic-field sweep")),
        ({"bhold": "True"}, ("BHoldEnabled=True", "time trace")),
        ({"curves": ("BField",)}, ("no MW_Absorption curve", "curves: BField")),
        ({"curves": ("MW_Absorption",)}, ("no BField curve",)),
        ({"root": "SomethingElse"}, ("<SomethingElse>", "Magnettech")),
        ({"compression": "Zip"}, ("Compression='Zip'", "Base64")),
        ({"encode": lambda v: "@@not base64@@"}, ("not valid base64",)),
        ({"b_unit": "s"}, ("unsupported field unit", "BField YUnit")),
        ({"bfrom": "400", "bto": "410"}, ("fewer than 2 signal points",)),
    ],
)
def test_magnettech_bad_files_get_one_line_errors(tmp_path, kw, needles):
    f = tmp_path / "bad.xml"
    _magnettech(f, **kw)
    _one_line_error(f, *needles)


def test_magnettech_not_xml_and_truncated(tmp_path):
    f = tmp_path / "junk.xml"
    f.write_text("this is not xml at all", encoding="utf-8")
    _one_line_error(f, "not well-formed XML")
    good = tmp_path / "good.xml"
    _magnettech(good)
    cut = tmp_path / "cut.xml"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_error(cut, "not well-formed XML")
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    _one_line_error(empty, "empty")
    _one_line_error(tmp_path / "missing.xml", "not found")


# --------------------------------------------------------------------------- #
# CIQTEK
# --------------------------------------------------------------------------- #
def _ciqtek(path: Path, traces=None, x_name="Field[G]", exp_type="CW EPR/1D Field Sweep", **over):
    """A CIQTEK .epr as the EPR200M writes it (keys and nesting from EasySpin's test file
    CIQTEK_1D.epr): ReData/ImData/gData per trace, settings as strings."""
    import json

    field = np.linspace(3440.6, 3540.6, 1024)
    if traces is None:
        traces = [(field, np.sin(field / 3.0), {})]
    doc = {
        "_dataVersion": "V2.0",
        "code": 1,
        "dataStore": {
            "lineDataList": [
                {
                    "ImData": [[x, 0.0] for x in f],
                    "ReData": [[x, v] for x, v in zip(f, y, strict=True)],
                    "freq": 9.80270021012544,
                    "gData": [
                        [0.714477 * 9.8027 / (x / 1e4) / 1e3, v] for x, v in zip(f, y, strict=True)
                    ],
                    "name": "1DFieldSweep",
                    "params": params,
                    "type": "1DFieldSweep",
                }
                for f, y, params in traces
            ],
            "xAxisName": x_name,
            "yAxisName": "Intensity",
        },
        "devicename": "EPR200_2.0",
        "name": "CWEPR-1DFieldSweep_1",
        "setting": {
            "frequency": "9.801978",
            "lineEdit_MB_Power": "3.162278",
            "lineEdit_SC_ModulAmp": "1.000",
            "lineEdit_1DFieldSweep_StartField": "3440.600",
        },
        "type": exp_type,
    }
    doc.update(over)
    path.write_text(json.dumps(doc, indent=4), encoding="utf-8")
    return traces


def test_ciqtek_1d(tmp_path):
    f = tmp_path / "CWEPR-1DFieldSweep_1.epr"
    [(field, y, _)] = _ciqtek(f)
    s = read_spectrum(f, slice_index=None)
    assert s.source_format == "CIQTEK" and s.n_points == 1024
    np.testing.assert_array_equal(s.field, field)
    np.testing.assert_array_equal(s.intensity, y)
    assert s.frequency_ghz == 9.80270021012544  # the trace's own, measured
    assert s.modulation_amplitude_g == 1.0 and s.power_mw == 3.162278
    assert s.title == "CWEPR-1DFieldSweep_1" and s.metadata["devicename"] == "EPR200_2.0"
    assert not s.field_unit_assumed
    assert s.notes == ("in-phase trace (ReData) used; quadrature (ImData) ignored",)


def test_ciqtek_2d_power_series_and_mt_axis(tmp_path):
    f = tmp_path / "power.EPR"  # any letter case
    field = np.linspace(330.0, 340.0, 50)
    traces = [(field, np.cos(field) * k, {"power": str(p)}) for k, p in ((1, 0.5), (2, 2.0))]
    _ciqtek(f, traces, x_name="Field[mT]", exp_type="CW EPR/2D Field Power")
    slices = read_all_slices(f)
    assert [s.power_mw for s in slices] == [0.5, 2.0]
    np.testing.assert_allclose(slices[1].field, field * 10.0, rtol=1e-15)
    np.testing.assert_array_equal(slices[1].intensity, np.cos(field) * 2)
    assert "slice 1 of 2 (power = 2)" in slices[1].notes
    assert read_spectrum(f, slice_index=-1).metadata["slice_y_value"] == "2.0"
    _one_line_error(f, "holds 2 slices", slice_index=None)
    _one_line_error(f, "out of range", slice_index=2)
    assert not any("stored twice" in n for s in slices for n in s.notes)


def test_ciqtek_a_slice_stored_twice_is_said(tmp_path):
    # EasySpin's CIQTEK_2D.epr: Delay_0 .. Delay_4, then Delay_4 again
    f = tmp_path / "delay.epr"
    field = np.linspace(3302.543, 3402.543, 100)
    traces = [(field, np.sin(field + k), {"delay": str(k)}) for k in range(3)]
    _ciqtek(f, traces + [traces[-1]], exp_type="CW EPR/2D Field-Delay Sweep")
    notes = [s.notes[-1] for s in read_all_slices(f)]
    assert notes[3] == "slice 3 of 4 (delay = 2): the same data as slice 2 (stored twice)"
    assert notes[2] == "slice 2 of 4 (delay = 2)"


def test_ciqtek_unit_unstated_is_assumed_then_given(tmp_path):
    f = tmp_path / "nounit.epr"
    _ciqtek(f, x_name="Field")
    s = read_spectrum(f)
    assert s.field_unit_assumed and s.field[0] == 3440.6
    t = read_spectrum(f, field_unit="mT")
    assert not t.field_unit_assumed and t.field[0] == pytest.approx(34406.0)


@pytest.mark.parametrize(
    "kw, needles",
    [
        ({"x_name": "Time[ns]", "exp_type": "Pulse/T1"}, ("not a magnetic-field sweep",)),
        # a 2D time-field sweep (spinlab's CIQTEK files): time on x, "field" in the type
        ({"x_name": "Time[ms]", "exp_type": "CW EPR/2D Time-Field Sweep"}, ("Time[ms]",)),
        ({"x_name": "Field[ms]"}, ("not a magnetic-field sweep",)),
        ({"dataStore": {"nothing": 1}}, ("no dataStore.lineDataList",)),
        ({"traces": [(np.array([3400.0]), np.ones(1), {})]}, ("ReData is not a list of",)),
        ({"traces": [(3400 + np.arange(3.0), np.array([0, np.nan, 1]), {})]}, ("non-finite",)),
    ],
)
def test_ciqtek_bad_files(tmp_path, kw, needles):
    f = tmp_path / "bad.epr"
    _ciqtek(f, **kw)
    _one_line_error(f, *needles)


def test_ciqtek_not_json(tmp_path):
    f = tmp_path / "x.epr"
    f.write_text('{"dataStore": {"lineDataList": [', encoding="utf-8")
    _one_line_error(f, "not valid JSON")
    f.write_bytes(b"\xff\xfe\x00garbage")
    _one_line_error(f, "not UTF-8")
    f.write_bytes(b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(40))  # CIQTEK also writes 7-Zip
    _one_line_error(f, "7-Zip archive", "7z x x.epr")


# --------------------------------------------------------------------------- #
# Adani e-Spinoza JSON
# --------------------------------------------------------------------------- #
def _adani(path: Path, signals, *, phase=0.3, n_phase=14, centre=337.5, width=15.0, **over):
    """An e-Spinoza .json (keys and nesting as EasySpin's test file adani/1d.json): each
    field point holds n_phase detector samples over one modulation period, here
    y * sin(2 pi k/n + phase) plus a quadrature part the projection must reject."""
    import json

    k = np.arange(n_phase)
    doc = {
        "ExperimentOptions": {
            "CommonOptions": {
                "MwParameter": {"AttenuationDb": 25.0, "PowerMW": 0.0, "BodyCase": 0},
                "CenterMagneticField": centre,
                "SweepWidth": width,
                "ModulationAmplitude": 100.0,
                "PointsCount": len(signals[0]),
            },
            "ExperimentType": 0,
            "InitialValue2D": 50.0,
            "FinalValue2D": 100.0,
            "Count2D": len(signals),
        },
        "Values": [
            {
                "Values": [
                    {
                        "Points": list(
                            y * np.sin(2 * np.pi * k / n_phase + phase)
                            + 0.7 * np.cos(2 * np.pi * k / n_phase + phase)
                        ),
                        "FrameNumber": j,
                        "Interpolated": False,
                    }
                    for j, y in enumerate(ys)
                ]
            }
            for ys in signals
        ],
        "Phase": phase,
        "NoiseLevel": 0.0,
        "MwFrequencyKHz": 9438158,
    }
    doc.update(over)
    path.write_text(json.dumps(doc), encoding="utf-8")


def test_adani_json_demodulated_on_its_field_axis(tmp_path):
    f = tmp_path / "1d.json"
    y = np.sin(np.linspace(0, 9, 1000))
    _adani(f, [y])
    s = read_spectrum(f, slice_index=None)
    assert s.source_format == "Adani" and s.n_points == 1000
    # the projection of y sin(.) + 0.7 cos(.) on sin(.) over a whole period: y * n / 2
    np.testing.assert_allclose(s.intensity, y * 7.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.field, np.linspace(3300.0, 3450.0, 1000), rtol=1e-15)
    assert s.frequency_ghz == pytest.approx(9.438158, rel=1e-12)
    assert s.power_mw is None  # PowerMW 0: not recorded
    assert s.metadata["ExperimentOptions.CommonOptions.ModulationAmplitude"] == "100.0"
    assert any("field in mT" in n for n in s.notes)
    assert read_spectrum(f, field_unit="G").field[0] == pytest.approx(330.0)


def test_adani_json_2d_and_phase(tmp_path):
    f = tmp_path / "2d.JSON"
    ys = [np.linspace(-1, 1, 50) * (i + 1) for i in range(3)]
    _adani(f, ys, phase=-1.1, n_phase=8)
    slices = read_all_slices(f)
    assert len(slices) == 3
    for i, s in enumerate(slices):
        np.testing.assert_allclose(s.intensity, ys[i] * 4.0, rtol=0, atol=1e-12)
    assert slices[2].metadata["slice_y_value"] == "100.0"  # InitialValue2D .. FinalValue2D
    assert slices[1].metadata["slice_y_value"] == "75.0"
    _one_line_error(f, "holds 3 slices", slice_index=None)


@pytest.mark.parametrize(
    "over, needles",
    [
        ({"Values": []}, ("no ExperimentOptions.CommonOptions and Values",)),
        (
            {"ExperimentOptions": {"CommonOptions": {"SweepWidth": 15.0}}},
            ("CenterMagneticField is None",),
        ),
        ({"Values": [{"Values": [{"Points": [1.0, 2.0]}, {"Points": [1.0]}]}]}, ("same length",)),
        ({"Values": [{"Values": [{"Points": [1.0, 2.0]}]}]}, ("at least 2",)),
        ({"Phase": "zero"}, ("Phase is 'zero'",)),
    ],
)
def test_adani_json_bad_files(tmp_path, over, needles):
    f = tmp_path / "bad.json"
    _adani(f, [np.ones(10)], **over)
    _one_line_error(f, *needles)


def test_our_own_predictions_json_is_not_an_adani_file(tmp_path):
    f = tmp_path / "predictions.json"
    f.write_text('[{"file": "a.DSC", "B0": 3380.0}]', encoding="utf-8")
    _one_line_error(f, "Adani e-Spinoza")


# --------------------------------------------------------------------------- #
# folder scans
# --------------------------------------------------------------------------- #
def test_folder_scan_keeps_vendor_spectra_and_skips_other_xml_json(tmp_path):
    from dysonian_pl import infer
    from dysonian_pl.readers import SPECTRUM_SUFFIXES, looks_like_spectrum

    assert {".xml", ".epr", ".json", ".dsc", ".txt"} <= set(SPECTRUM_SUFFIXES)
    _magnettech(tmp_path / "a.xml")
    _ciqtek(tmp_path / "b.epr")
    _adani(tmp_path / "c.json", [np.ones(10)])
    (tmp_path / "predictions.json").write_text('[{"file": "a.xml", "B0": 3380.0}]')
    (tmp_path / "settings.xml").write_text('<?xml version="1.0"?><config a="1"/>')
    (tmp_path / "notes.md").write_text("not a spectrum")
    found = [Path(p).name for _, p in infer.expand_inputs([str(tmp_path)])]
    assert found == ["a.xml", "b.epr", "c.json"]
    assert not looks_like_spectrum(tmp_path / "predictions.json")
    # named explicitly, a file is read (and its error reported), not silently skipped
    assert [p for _, p in infer.expand_inputs([str(tmp_path / "settings.xml")])] == [
        str(tmp_path / "settings.xml")
    ]


# --------------------------------------------------------------------------- #
# Active Spectrum .ESR
# --------------------------------------------------------------------------- #
def _active_spectrum(path: Path, n=4096, n_sweeps=16, field_head="FIELD (G)", stated=None):
    """An Active Spectrum .ESR (layout of EasySpin's test file 10uM_TEMPOL...ESR): 17 tabs
    on every line, CRLF, header rows, 'FIELD (G)<tab>INTENSITY', then field, the averaged
    intensity and one column per sweep."""
    rng = np.random.default_rng(3)
    field = np.linspace(3272.0, 3604.0, n)
    sweeps = np.sin(field / 20.0)[:, None] + 0.1 * rng.standard_normal((n, n_sweeps))
    avg = sweeps.mean(axis=1)
    pad = lambda cells: "\t".join(cells + [""] * (18 - len(cells)))  # noqa: E731
    head = [
        pad(["SAMPLE NAME", "TEMPOL test"]),
        pad(["MICROWAVE POWER (mW)", "10"]),
        pad(["STARTING SWEEP FIELD (G)", "3272.000000"]),
        pad(["ENDING SWEEP FIELD (G)", "3604.000000"]),
        pad(["NUMBER OF POINTS", f"{stated or n:.6f}"]),
        pad(["NUMBER OF SWEEPS", f"{n_sweeps:.6f}"]),
        pad(["MODCOIL SETTING", "100"]),
        pad([]),
        pad(["SWEEP NUMBER", "AVERAGED"] + [f"SWEEP {i + 1}" for i in range(n_sweeps)]),
        pad(["FREQUENCY (MHz)"] + ["9805.704000"] * (n_sweeps + 1)),
        pad([]),
        pad([field_head, "INTENSITY"]),
    ]
    rows = ["\t".join(f"{v:.6f}" for v in [field[i], avg[i], *sweeps[i]]) for i in range(n)]
    path.write_bytes(("\r\n".join(head + rows) + "\r\n").encode())
    return np.round(field, 6), np.round(avg, 6)


def test_active_spectrum_averaged_column(tmp_path):
    f = tmp_path / "10uM_TEMPOL.ESR"
    field, avg = _active_spectrum(f)
    s = read_spectrum(f, slice_index=None)
    assert s.source_format == "ActiveSpectrum" and s.n_points == 4096
    np.testing.assert_allclose(s.field, field, rtol=0, atol=1e-9)
    np.testing.assert_allclose(s.intensity, avg, rtol=0, atol=1e-9)
    assert s.frequency_ghz == pytest.approx(9.805704) and s.power_mw == 10.0
    assert s.title == "TEMPOL test" and s.metadata["MODCOIL SETTING"] == "100"
    assert s.notes == ("averaged intensity column used (mean of 16 sweeps)",)
    assert not s.field_unit_assumed


def test_active_spectrum_count_mismatch_noted_and_bad_files(tmp_path):
    f = tmp_path / "short.esr"
    _active_spectrum(f, n=50, stated=4096)
    assert "header says 4096 points, the file has 50 data rows" in read_spectrum(f).notes
    g = tmp_path / "nofield.esr"
    g.write_text("SAMPLE NAME\tx\r\n1\t2\r\n3\t4\r\n")
    _one_line_error(g, "no 'FIELD (G)' line")
    h = tmp_path / "unit.esr"
    _active_spectrum(h, n=10, field_head="FIELD (s)")
    _one_line_error(h, "names no field unit")
    k = tmp_path / "text.esr"
    k.write_text("FIELD (G)\tINTENSITY\r\n3300\t1\r\nabc\tdef\r\n")
    _one_line_error(k, "line 3", "not a field and an intensity")


def test_adani_json_two_values_per_point_read_along_the_signal(tmp_path):
    # the newer e-Spinoza form (EasySpin's Mn.json): Points = the lock-in's (I, Q), with a
    # PhaseRadians that is not the signal's own (there: 18 degrees off). The signal's
    # direction is found, so the line comes out whole and the right way up.
    import json

    theta = 3.0  # the signal's phase
    y = np.sin(np.linspace(0, 12, 400)) * np.exp(-(np.linspace(-2, 2, 400) ** 2))
    rng = np.random.default_rng(0)
    iq = np.stack([y * np.cos(theta), y * np.sin(theta)], axis=1)
    iq += 1e-4 * rng.standard_normal(iq.shape)
    doc = {
        "ExperimentOptions": {"CommonOptions": {"CenterMagneticField": 333.9, "SweepWidth": 15.0}},
        "Values": [{"Values": [{"Points": list(p), "FrameNumber": i} for i, p in enumerate(iq)]}],
        "PhaseRadians": theta - np.radians(18.0),
        "MwFrequencyKHz": 9383722,
    }
    f = tmp_path / "Mn.json"
    f.write_text(json.dumps(doc), encoding="utf-8")
    s = read_spectrum(f)
    np.testing.assert_allclose(s.intensity, y, rtol=0, atol=1e-3)
    assert "lock-in I, Q" in s.notes[0] and "18 degrees from the stored PhaseRadians" in s.notes[0]
    # eprload's n = 2 form, sin(phi) (P0 - P1), would give this (inverted, weaker):
    phi = doc["PhaseRadians"]
    eprload = np.sin(phi) * (iq[:, 0] - iq[:, 1])
    assert np.corrcoef(eprload, y)[0, 1] < 0


# --------------------------------------------------------------------------- #
# Magnettech .spe (binary, older MiniScope)
# --------------------------------------------------------------------------- #
def _spe(path: Path, y, *, centre=(3360, 50), width=(100, 0), mod=(2000, 0), flags=3, khz=9441250):
    """Write the layout EasySpin's eprload reads: int16 data, then 13 four-byte singles
    (int16 pairs), an int32 temperature, one more single, the flags byte and 3 bytes of
    frequency in kHz (big-endian)."""
    singles = [centre, width, mod, (20, 0), (60, 0)] + [(0, 0)] * 8
    tail = b"".join(struct.pack("<hh", a, b) for a, b in singles)
    tail += struct.pack("<i", 21) + struct.pack("<hh", 0, 0) + bytes([flags])
    tail += khz.to_bytes(3, "big")
    assert len(tail) == 64
    path.write_bytes(np.asarray(y, "<i2").tobytes() + tail)


def test_magnettech_spe_layout(tmp_path):
    f = tmp_path / "old.SPE"
    y = (3000 * np.sin(np.linspace(0, 20, 4096))).astype(int)
    _spe(f, y, flags=3)  # bit 1: frequency present; bit 2: newer variant (b / 1000)
    s = read_spectrum(f)
    assert s.source_format == "MagnettechSPE" and s.n_points == 4096
    np.testing.assert_array_equal(s.intensity, y)
    # centre 3360 + 50/1000 G, width 100 G
    np.testing.assert_allclose(s.field, 3360.05 + np.linspace(-50, 50, 4096), rtol=0, atol=1e-9)
    assert s.modulation_amplitude_g == pytest.approx(2.0)  # 2000 (0.1 uT) = 0.2 mT
    assert s.frequency_ghz == pytest.approx(9.44125)
    assert "newer .spe variant" in s.notes[0] and "not checked on a real file" in s.notes[0]
    g = tmp_path / "older.spe"
    _spe(g, y[:1024], flags=0)  # older variant: b / 100; no frequency
    t = read_spectrum(g)
    assert t.n_points == 1024 and t.field[0] == pytest.approx(3360.5 - 50.0)
    assert t.frequency_ghz is None


def test_magnettech_spe_bad_size_and_width(tmp_path):
    f = tmp_path / "raman.spe"  # e.g. a Princeton Instruments camera file
    f.write_bytes(bytes(4100))
    _one_line_error(f, "4100 bytes", "2 * n + 64")
    g = tmp_path / "zero.spe"
    _spe(g, np.zeros(512), width=(0, 0))
    _one_line_error(g, "positive sweep width")
