"""Readers for measured cw-EPR spectra (pure NumPy, no torch).

Formats:

* Bruker BES3T (``.DSC`` descriptor + ``.DTA`` data, optional ``.XGF``/``.YGF``
  axis companions), 1D and 2D (one slice at a time or all slices).
* Bruker ESP and WinEPR (``.par`` + ``.spc``): ESP is big-endian int32, WinEPR
  (``DOS`` key in the ``.par``) little-endian float32, as in EasySpin's eprload;
  1D, and 2D (``JSS`` bit 4096, ``SSX`` x ``SSY``) one slice at a time. Non-field
  experiments (``JEX`` time-sweep, ENDOR, ...) are refused.
* Text exports (``.txt``, ``.csv``, ``.asc``, ``.dat``): two columns (field,
  intensity) or three (index, field, intensity), comma/tab/semicolon/space
  separated (decimal commas with ';'/tab/space separators too), with optional
  header lines. Named columns (``Field [G]``, ``Intensity``) are picked by name;
  a field column whose unit is a time/frequency/... is refused. WinEPR's 2D export
  ("Slice N" blocks) and long 2D tables (a y column constant along each sweep) are
  read slice by slice.
* Magnettech ESRStudio ``.xml`` (MS-5000, ESR5000): the ``MW_Absorption`` curve
  against the ``BField`` curve (the Hall probe's record in time) interpolated at the
  signal's times, cut to the recipe's Bfrom..Bto (as EasySpin's eprload and cwepr do;
  checked identical to cwepr's importer on its test files). Kinetic and field-hold
  recipes are refused.
* Magnettech ``.spe`` (binary; MiniScope MS400 and older): int16 data and a 64-byte
  trailer, laid out as EasySpin's eprload describes it (synthetic tests only: no real
  ``.spe`` file was at hand).
* CIQTEK ``.epr`` (JSON): each ``dataStore.lineDataList`` trace is a slice, its
  ``ReData`` (field, in-phase) pairs the spectrum; the field unit from ``xAxisName``.
  A 7-Zip-packed ``.epr`` gets an error that says to extract it.
* Adani e-Spinoza ``.json``: per field point, the first harmonic's in-phase and
  quadrature parts (from the detector's samples over one modulation period, or the
  lock-in's two values in newer files), taken along their principal direction with the
  sign of the stored phase; the axis from CenterMagneticField and SweepWidth (mT).
  Checked on EasySpin's two example files (tests/data/external/easyspin-adani).
* Active Spectrum ``.ESR``: tab-separated header, ``FIELD (G)``, then field, averaged
  intensity and the single sweeps; the averaged column is read.

Every spectrum comes back with its field axis in gauss **in file order** (no
sorting; ``sweep_direction`` says which way it runs) and a float64 real intensity.
Every failure is a :class:`SpectrumFileError` with a one-line message that names
the file, the problem and what was expected. Binary reads are size-checked
against the header *before* any array is allocated, so a corrupt header cannot
trigger a huge allocation.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Spectrum",
    "SpectrumFileError",
    "read_spectrum",
    "read_all_slices",
    "SPECTRUM_SUFFIXES",
    "SUPPORTED",
    "looks_like_spectrum",
]


class SpectrumFileError(ValueError):
    """A spectrum file (or its companion) is missing, malformed or unsupported."""


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One measured spectrum; field in gauss in file order, intensity float64."""

    field: np.ndarray
    intensity: np.ndarray
    path: str
    source_format: str
    frequency_ghz: float | None = None
    modulation_amplitude_g: float | None = None
    power_mw: float | None = None
    sweep_direction: str = "up"
    title: str | None = None
    notes: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict)
    #: a text file that names no field unit, none given (``field_unit``): gauss assumed.
    #: (BES3T without XUNI and ESP without JUN are read in gauss, those formats' default
    #: and EasySpin's, with a note only.)
    field_unit_assumed: bool = False

    @property
    def n_points(self) -> int:
        return int(self.field.shape[0])


# --------------------------------------------------------------------------- #
# shared helpers
# --------------------------------------------------------------------------- #
_BES3T_EXT = (".dsc", ".dta")
_ESP_EXT = (".par", ".spc")
_TEXT_EXT = (".txt", ".csv", ".asc", ".dat")
_MAGNETTECH_EXT = (".xml",)
_SPE_EXT = (".spe",)
_CIQTEK_EXT = (".epr",)
_ADANI_EXT = (".json",)
_ACTIVE_SPECTRUM_EXT = (".esr",)
#: the file types read, as help texts and errors name them
SUPPORTED = (
    "Bruker BES3T .DSC/.DTA, ESP/WinEPR .par/.spc, Magnettech .xml/.spe, CIQTEK .epr, "
    "Adani .json, Active Spectrum .ESR, text .txt/.csv/.asc/.dat"
)

# oersted: some instruments label the swept field H; 1 Oe gives 1 G in vacuum
_FIELD_UNITS = {
    "g": 1.0, "gauss": 1.0, "mt": 10.0, "t": 1.0e4, "tesla": 1.0e4, "oe": 1.0, "oersted": 1.0,
}  # fmt: skip
#: the units ``field_unit`` accepts (the field unit of a file that names none)
FIELD_UNITS = ("G", "mT", "T")
#: what `infer` and `lsq` say about a spectrum with ``field_unit_assumed``
UNIT_ASSUMED = (
    "the file names no field unit, so its field was read in gauss{where}: if it is in mT "
    "or T, run again with --field-unit mT (or T)"
)
_POWER_UNITS = {"w": 1.0e3, "mw": 1.0, "uw": 1.0e-3, "µw": 1.0e-3, "μw": 1.0e-3, "nw": 1.0e-6}
_FREQ_UNITS = {"hz": 1.0e-9, "khz": 1.0e-6, "mhz": 1.0e-3, "ghz": 1.0}


def _err(path: str | os.PathLike, message: str) -> SpectrumFileError:
    """Build a one-line error naming the file."""
    text = " ".join(str(message).split())
    return SpectrumFileError(f"{Path(path).name}: {text}")


def _file_size(path: Path, what: str) -> int:
    """Size of an existing, non-empty file, else a clean error."""
    if not path.is_file():
        raise _err(path, f"{what} not found")
    size = path.stat().st_size
    if size == 0:
        raise _err(path, f"file is empty (0 bytes); expected {what}")
    return size


def _find_companion(path: Path, ext: str, role: str, required: bool = True) -> Path | None:
    """Find ``stem + ext`` beside ``path``, matching the extension (and stem) case-insensitively.

    Prefers the same letter case as the given file's extension, then an exact stem.
    """
    directory = path.parent
    stem = path.stem
    want = (stem + ext).lower()
    try:
        entries = sorted(os.listdir(directory if str(directory) else "."))
    except OSError:
        entries = []
    matches = [e for e in entries if e.lower() == want and (directory / e).is_file()]
    if matches:
        upper = path.suffix.isupper()

        def rank(name: str) -> tuple[int, int]:
            suffix = name[len(name) - len(ext) :]
            return (name[: len(stem)] != stem, suffix.isupper() != upper)

        return directory / min(matches, key=rank)
    if required:
        shown = stem + (ext.upper() if path.suffix.isupper() else ext.lower())
        raise _err(
            path,
            f"companion {role} {shown} not found "
            f"(looked for {ext.upper()}/{ext.lower()} beside it, any letter case)",
        )
    return None


def _check_field_unit(field_unit: str | None) -> str | None:
    """``field_unit`` as one of `FIELD_UNITS` (any case), None kept; else ValueError."""
    if field_unit is None:
        return None
    for u in FIELD_UNITS:
        if str(field_unit).strip().lower() == u.lower():
            return u
    raise ValueError(
        f"field_unit {field_unit!r} is not a field unit; expected one of "
        f"{', '.join(FIELD_UNITS)} (the unit of a file that names none)"
    )


def _unstated_unit(field_unit: str | None, notes: list[str], where: str) -> tuple[str, float]:
    """(unit, gauss per unit) for a file that names no field unit, with a note saying which."""
    if field_unit is None:
        notes.append(f"{where}: field assumed to be in gauss")
        return "G", 1.0
    notes.append(f"{where}: field read in {field_unit} as asked (field_unit)")
    return field_unit, _FIELD_UNITS[field_unit.lower()]


def _field_factor(path: Path, unit: str, key: str) -> float:
    """Gauss per unit of a field-axis unit string, or a clean error."""
    u = unit.strip().strip("'\"[]() ").lower()
    if u in _FIELD_UNITS:
        return _FIELD_UNITS[u]
    raise _err(
        path,
        f"unsupported field unit {key}={unit.strip()!r}; expected G, mT, T or Oe "
        "(a magnetic-field sweep)",
    )


_QUANTITY_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµμ]*)\s*$")


def _quantity(text: str | None, units: dict[str, float], default_unit: str) -> float | None:
    """Parse '2.000 mW' / '0.01 mT' / '9.5e9' into a number in the target unit, or None."""
    if text is None:
        return None
    m = _QUANTITY_RE.match(str(text).strip().strip("'\""))
    if not m:
        return None
    unit = (m.group(2) or default_unit).lower()
    if unit not in units:
        return None
    return float(m.group(1)) * units[unit]


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(str(text).strip().strip("'\"").split()[0])
    except (ValueError, IndexError):
        return None


def _int_key(path: Path, meta: dict, key: str, required: bool, default: int | None = None) -> int:
    """A positive integer header value, or a clean error."""
    raw = meta.get(key)
    if raw is None:
        if required:
            raise _err(path, f"header has no {key}; expected the number of points ({key} <n>)")
        return default  # type: ignore[return-value]
    try:
        value = float(raw.split()[0])
    except (ValueError, IndexError):
        raise _err(
            path, f"header {key}={raw!r} is not a number; expected a positive integer"
        ) from None
    if not np.isfinite(value) or value != int(value) or value < 1:
        raise _err(path, f"header {key}={raw!r} is not a positive integer")
    return int(value)


def _slice_index(path: Path, index: int | None, n: int) -> int:
    """``index`` checked against ``n`` slices (None: the file must be 1D), made non-negative."""
    if index is None:
        if n > 1:
            raise _err(
                path,
                f"file holds {n} slices (2D); pass slice_index=0..{n - 1} or use read_all_slices",
            )
        return 0
    if not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise _err(path, f"slice_index {index!r} out of range; file has {n} slice(s)")
    return int(index) % n


def _read_binary(
    path: Path, dtype: np.dtype, count: int, header_desc: str, what: str = "data file"
) -> np.ndarray:
    """Read exactly ``count`` items of ``dtype``; the size is checked before allocating."""
    size = _file_size(path, what)
    needed = int(count) * np.dtype(dtype).itemsize
    if size != needed:
        problem = "truncated: " if size < needed else ""
        raise _err(
            path,
            f"{problem}file has {size} bytes but the header ({header_desc}) needs {needed}",
        )
    return np.fromfile(path, dtype=dtype, count=count)


def _check_finite(path: Path, values: np.ndarray, what: str = "data") -> None:
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(values)))
        raise _err(
            path,
            f"{what} contain {bad} non-finite value(s) ({n_nan} NaN, {bad - n_nan} Inf) "
            f"out of {np.size(values)}; expected finite numbers",
        )


def _direction(axis: np.ndarray) -> str:
    return "down" if axis.size > 1 and axis[-1] < axis[0] else "up"


def _make(
    path: Path,
    fmt: str,
    axis: np.ndarray,
    values: np.ndarray,
    meta: dict,
    notes: list[str],
    *,
    frequency_ghz: float | None,
    modulation_amplitude_g: float | None,
    power_mw: float | None,
    title: str | None,
    field_unit_assumed: bool = False,
) -> Spectrum:
    axis = np.ascontiguousarray(axis, dtype=np.float64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if axis.shape != values.shape or axis.ndim != 1:
        raise _err(
            path, f"field axis ({axis.shape}) and intensity ({values.shape}) differ in shape"
        )
    _check_finite(path, values, "intensity data")
    _check_finite(path, axis, "field axis values")
    return Spectrum(
        field=axis,
        intensity=values,
        path=str(path),
        source_format=fmt,
        frequency_ghz=frequency_ghz,
        modulation_amplitude_g=modulation_amplitude_g,
        power_mw=power_mw,
        sweep_direction=_direction(axis),
        title=title or None,
        notes=tuple(notes),
        metadata=dict(meta),
        field_unit_assumed=field_unit_assumed,
    )


def _read_text_lines(path: Path, what: str) -> list[str]:
    """Text file split on CR, LF or CRLF (non-UTF-8 bytes tolerated)."""
    _file_size(path, what)
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with BOM (Windows "Unicode" export)
        text = raw.decode("utf-16", errors="replace")
    elif b"\x00" not in raw[:4096]:
        text = raw.decode("utf-8", errors="replace")
    else:
        raise _err(path, f"looks binary (NUL bytes); expected {what} (text)")
    text = text.lstrip("\ufeff")  # UTF-8 byte-order mark
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _unquote(value: str) -> str:
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def read_spectrum(
    path: str | os.PathLike, slice_index: int | None = 0, field_unit: str | None = None
) -> Spectrum:
    """Read one spectrum from a file of any format above (by its extension).

    ``slice_index`` selects the slice of a 2D file (BES3T, ESP/WinEPR, CIQTEK, Adani or
    a 2D text export; default the first); ``None`` demands a 1D file and raises if the file
    holds several slices. ``field_unit`` (one of `FIELD_UNITS`) is the field's unit
    where the file names none (no XUNI, no JUN, no unit in a text header); without it
    such a file is read in gauss and the spectrum says so (``field_unit_assumed``). A
    unit the file names always wins.
    """
    return _reader(path, field_unit).slice(slice_index)


def read_all_slices(path: str | os.PathLike, field_unit: str | None = None) -> list[Spectrum]:
    """All slices of a (possibly 2D) file of any format `read_spectrum` reads
    (``field_unit``: as there); a one-element list for a 1D file."""
    reader = _reader(path, field_unit)
    return [reader.slice(i) for i in range(reader.n_slices)]


def _reader(path: str | os.PathLike, field_unit: str | None):
    """The parsed file, by extension (any letter case); slices built on demand."""
    field_unit = _check_field_unit(field_unit)
    p = Path(path)
    ext = p.suffix.lower()
    for exts, cls in _READERS:
        if ext in exts:
            if not p.is_file():
                raise _err(p, f"file not found (looked for {p})")
            return cls(p, field_unit)
    raise _err(p, f"unknown file type {p.suffix or '(none)'!r} (supported: {SUPPORTED})")


# --------------------------------------------------------------------------- #
# BES3T
# --------------------------------------------------------------------------- #
_BSEQ = {"BIG": ">", "LIT": "<"}
_IRFMT = {"D": "f8", "F": "f4", "I": "i4", "S": "i2", "C": "i1"}


def _parse_dsc(path: Path) -> dict:
    """Key/value pairs of a .DSC file; device-layer keys also stored as 'device.key'."""
    raw_lines = _read_text_lines(path, "a BES3T descriptor (.DSC)")
    lines: list[str] = []
    pending: str | None = None  # a line ending in a single '\\' continues on the next
    for raw in raw_lines:
        text = raw.strip() if pending is None else pending + " " + raw.strip()
        if text.endswith("\\") and not text.endswith("\\\\"):
            pending = text[:-1].rstrip()
            continue
        pending = None
        lines.append(text)
    if pending is not None:
        lines.append(pending)
    meta: dict[str, str] = {}
    device = None
    for stripped in lines:
        if not stripped or stripped.startswith("*"):
            continue
        if stripped.startswith("#"):
            device = None
            continue
        parts = stripped.split(None, 1)
        key = parts[0]
        value = _unquote(parts[1]) if len(parts) > 1 else ""
        if key == ".DVC":
            device = value.split(",")[0].strip()
            continue
        meta.setdefault(key, value)
        if device:
            meta[f"{device}.{key}"] = value
    if not meta:
        raise _err(path, "no key/value lines found; expected a BES3T descriptor (.DSC)")
    return meta


class _BES3T:
    """Parsed BES3T descriptor plus the size-checked data; slices built on demand."""

    def __init__(self, path: Path, field_unit: str | None = None):
        if path.suffix.lower() == ".dsc":
            dsc = path
            dta = _find_companion(path, ".DTA", "data file")
        else:
            dta = path
            dsc = _find_companion(path, ".DSC", "descriptor file")
        self.dsc, self.dta = dsc, dta
        self.field_unit = field_unit
        meta = _parse_dsc(dsc)
        self.meta = meta
        self.notes: list[str] = []

        bseq = meta.get("BSEQ", "BIG").strip().upper()
        if bseq not in _BSEQ:
            raise _err(dsc, f"unknown BSEQ {bseq!r}; expected BIG or LIT")
        self.order = _BSEQ[bseq]

        ikkf = [s.strip().upper() for s in meta.get("IKKF", "REAL").split(",")]
        for k in ikkf:
            if k not in ("REAL", "CPLX"):
                raise _err(dsc, f"unknown IKKF value {k!r}; expected REAL or CPLX")
        irfmt = [s.strip().upper() for s in meta.get("IRFMT", "D").split(",")]
        for f in irfmt:
            if f not in _IRFMT:
                raise _err(
                    dsc,
                    f"unknown or unsupported IRFMT {f!r}; expected one of "
                    "D (float64), F (float32), I (int32), S (int16), C (int8)",
                )
        if len(set(irfmt)) > 1:
            raise _err(dsc, f"mixed IRFMT {','.join(irfmt)} not supported; expected one format")
        if len(irfmt) not in (1, len(ikkf)):
            raise _err(dsc, f"IRFMT has {len(irfmt)} entries but IKKF has {len(ikkf)}")
        self.dtype = np.dtype(self.order + _IRFMT[irfmt[0]])
        values_per_point = sum(2 if k == "CPLX" else 1 for k in ikkf)
        if ikkf[0] == "CPLX":
            self.notes.append("complex data: real part of channel 1 used")
        if len(ikkf) > 1:
            self.notes.append(f"{len(ikkf)} data channels ({','.join(ikkf)}): channel 1 used")

        xpts = _int_key(dsc, meta, "XPTS", required=True)
        ny = (
            _int_key(dsc, meta, "YPTS", False, 1)
            if meta.get("YTYP", "NODATA").upper() != "NODATA"
            else 1
        )
        nz = (
            _int_key(dsc, meta, "ZPTS", False, 1)
            if meta.get("ZTYP", "NODATA").upper() != "NODATA"
            else 1
        )
        self.xpts, self.n_slices = xpts, ny * nz
        desc = f"XPTS={xpts}, IRFMT={','.join(irfmt)}, IKKF={','.join(ikkf)}, YPTS={ny}"
        if nz > 1:
            desc += f", ZPTS={nz}"
        raw = _read_binary(dta, self.dtype, xpts * self.n_slices * values_per_point, desc)
        self.data = raw.reshape(self.n_slices, xpts, values_per_point)[:, :, 0]

        self.axis = self._x_axis()
        self.y_values = self._y_axis(ny)

        self.frequency = _quantity(meta.get("MWFQ"), _FREQ_UNITS, "Hz")
        if self.frequency is None:
            self.frequency = _quantity(meta.get("FrequencyMon"), _FREQ_UNITS, "GHz")
        self.modamp = _quantity(meta.get("ModAmp"), _FIELD_UNITS, "G")
        if self.modamp is None and _float(meta.get("B0MA")) is not None:
            self.modamp = _float(meta.get("B0MA")) * 1.0e4  # type: ignore[operator]
        self.power = _quantity(meta.get("Power"), _POWER_UNITS, "mW")
        if self.power is None and _float(meta.get("MWPW")) is not None:
            self.power = _float(meta.get("MWPW")) * 1.0e3  # type: ignore[operator]
        self.title = meta.get("TITL")

    def _x_axis(self) -> np.ndarray:
        meta, dsc = self.meta, self.dsc
        xuni = meta.get("XUNI", "G")
        if "XUNI" in meta and xuni.strip().strip("'\"[]() ").lower() not in _FIELD_UNITS:
            xnam = meta.get("XNAM", "").strip()
            what = f"x axis {xnam!r}" if xnam else "x axis"
            hint = ""
            yuni = meta.get("YUNI", "").strip().strip("'\"[]() ").lower()
            if meta.get("YTYP", "NODATA").strip().upper() != "NODATA" and yuni in _FIELD_UNITS:
                hint = (
                    " (the field is the y axis here: a field-vs-time/other 2D set, not supported)"
                )
            raise _err(
                dsc,
                f"{what} has unit XUNI={xuni.strip()!r}, not a magnetic field{hint}; "
                "expected a field sweep along x (XUNI G, mT or T)",
            )
        if "XUNI" in meta:
            factor = _field_factor(dsc, xuni, "XUNI")
        else:
            # gauss, the format's default (EasySpin's eprload too): a note, no warning
            factor = _unstated_unit(self.field_unit, self.notes, "no XUNI in descriptor")[1]
        xtyp = meta.get("XTYP", "IDX").strip().upper()
        if xtyp == "IGD":
            xgf = _find_companion(self.dsc, ".XGF", "x-axis file", required=False)
            if xgf is not None:
                fmt = meta.get("XFMT", "D").strip().upper()
                if fmt not in _IRFMT:
                    raise _err(dsc, f"unknown XFMT {fmt!r}; expected D, F, I, S or C")
                axis = _read_binary(
                    xgf,
                    np.dtype(self.order + _IRFMT[fmt]),
                    self.xpts,
                    f"XPTS={self.xpts}, XFMT={fmt}",
                    "x-axis file (.XGF)",
                )
                return axis.astype(np.float64) * factor
            self.notes.append("XTYP IGD but no .XGF companion: linear axis from XMIN/XWID used")
        xmin, xwid = _float(meta.get("XMIN")), _float(meta.get("XWID"))
        if xmin is None or xwid is None:
            raise _err(dsc, "header has no numeric XMIN/XWID; expected the field range")
        return np.linspace(xmin, xmin + xwid, self.xpts) * factor

    def _y_axis(self, ny: int) -> np.ndarray | None:
        meta = self.meta
        ytyp = meta.get("YTYP", "NODATA").strip().upper()
        if ytyp == "NODATA" or ny <= 1:
            return None
        if ytyp == "IGD":
            ygf = _find_companion(self.dsc, ".YGF", "y-axis file", required=False)
            if ygf is not None:
                fmt = meta.get("YFMT", "D").strip().upper()
                if fmt not in _IRFMT:
                    raise _err(self.dsc, f"unknown YFMT {fmt!r}; expected D, F, I, S or C")
                return _read_binary(
                    ygf,
                    np.dtype(self.order + _IRFMT[fmt]),
                    ny,
                    f"YPTS={ny}, YFMT={fmt}",
                    "y-axis file (.YGF)",
                ).astype(np.float64)
            self.notes.append("YTYP IGD but no .YGF companion: linear y axis from YMIN/YWID used")
        ymin, ywid = _float(meta.get("YMIN")), _float(meta.get("YWID"))
        if ymin is None or ywid is None:
            return None
        return np.linspace(ymin, ymin + ywid, ny)

    def slice(self, index: int | None) -> Spectrum:
        n = self.n_slices
        index = _slice_index(self.dsc, index, n)
        notes = list(self.notes)
        meta = dict(self.meta)
        power = self.power
        if n > 1:
            meta["slice_index"] = str(index)
            meta["n_slices"] = str(n)
            desc = f"slice {index} of {n}"
            if self.y_values is not None and index < self.y_values.size:
                y = float(self.y_values[index])
                name = self.meta.get("YNAM", "y")
                unit = self.meta.get("YUNI", "")
                meta["slice_y_value"] = repr(y)
                meta["slice_y_unit"] = unit
                desc += f" ({name} = {y:g} {unit})".rstrip()
                if "power" in name.lower() and unit.strip().lower() in _POWER_UNITS:
                    power = y * _POWER_UNITS[unit.strip().lower()]
            notes.append(desc)
        return _make(
            self.dta,
            "BES3T",
            self.axis,
            self.data[index],
            meta,
            notes,
            frequency_ghz=self.frequency,
            modulation_amplitude_g=self.modamp,
            power_mw=power,
            title=self.title,
        )


# --------------------------------------------------------------------------- #
# ESP / WinEPR
# --------------------------------------------------------------------------- #
def _parse_par(path: Path) -> dict:
    """Key/value pairs of a .par file (CR, LF or CRLF); indented lines continue a value."""
    lines = _read_text_lines(path, "an ESP/WinEPR parameter file (.par)")
    meta: dict[str, str] = {}
    last = None
    for line in lines:
        if not line.strip():
            continue
        if line[0] in " \t" and last is not None:
            meta[last] = (meta[last] + " " + line.strip()).strip()
            continue
        parts = line.strip().split(None, 1)
        key = parts[0]
        if not key[0].isalpha():  # '*' comments and junk, as in eprload
            last = None
            continue
        meta[key] = _unquote(parts[1]) if len(parts) > 1 else ""
        last = key
    if not meta:
        raise _err(path, "no key/value lines found; expected an ESP/WinEPR parameter file")
    return meta


class _ESP:
    """Parsed ESP/WinEPR ``.par`` plus the size-checked ``.spc``; 2D (JSS bit 4096) by slice."""

    def __init__(self, path: Path, field_unit: str | None = None):
        if path.suffix.lower() == ".par":
            par, spc = path, _find_companion(path, ".SPC", "data file")
        else:
            spc, par = path, _find_companion(path, ".PAR", "parameter file")
        self.par, self.spc = par, spc
        meta = _parse_par(par)
        self.meta = meta
        notes: list[str] = []
        self.notes = notes

        winepr = "DOS" in meta
        fmt = "WinEPR" if winepr else "ESP"
        self.fmt = fmt
        dtype = np.dtype("<f4") if winepr else np.dtype(">i4")
        flags = int(_float(meta.get("JSS")) or 0)
        is_complex = bool(flags & 16)
        two_d = bool(flags & 4096)

        jex = meta.get("JEX", "").strip()
        if jex and "field" not in jex.lower():
            raise _err(
                par,
                f"JEX={jex!r}: not a magnetic-field sweep; expected JEX field-sweep "
                "(a cw-EPR field sweep)",
            )

        size = _file_size(spc, "data file (.spc)")
        per_point = 2 if is_complex else 1
        ny = 1
        if two_d:
            # eprload: SSX/SSY give the 2D size; RES/REY (and XPLS) override them
            nx = ny = None
            for key in ("XPLS", "RES", "SSX"):
                if key in meta:
                    nx = _int_key(par, meta, key, required=True)
                    if key == "SSX" and is_complex:
                        nx //= 2
                    x_key = key
                    break
            for key in ("REY", "SSY"):
                if key in meta:
                    ny = _int_key(par, meta, key, required=True)
                    y_key = key
                    break
            if nx is None or ny is None:
                raise _err(
                    par,
                    f"JSS={flags} marks 2D data but the header has no "
                    f"{'SSX/RES' if nx is None else 'SSY/REY'}; expected the 2D size",
                )
            desc = f"{x_key}={nx}, {y_key}={ny}"
        else:
            nx = None
            for key in ("XPLS", "RES", "ANZ", "SSX"):  # eprload precedence: XPLS > RES > ANZ > SSX
                if key in meta:
                    nx = _int_key(par, meta, key, required=True)
                    if key in ("ANZ", "SSX") and is_complex:
                        nx //= 2
                    count_key = key
                    break
            if nx is None:
                if size % (4 * per_point):
                    raise _err(
                        spc,
                        f"file has {size} bytes, not a multiple of {4 * per_point}; "
                        f"expected {fmt} {'complex ' if is_complex else ''}4-byte values",
                    )
                nx = size // (4 * per_point)
                count_key = "file size"
                notes.append(f"no point count in .par: {nx} points from the file size")
            desc = f"{count_key}={nx}"
        desc += f", {fmt} {'little-endian float32' if winepr else 'big-endian int32'}"
        if is_complex:
            desc += ", complex"
        raw = _read_binary(spc, dtype, nx * ny * per_point, desc, "data file (.spc)")
        self.data = raw.reshape(ny, nx, per_point)[:, :, 0]
        self.xpts, self.n_slices = nx, ny
        if is_complex:
            notes.append("complex data: real part used")

        gst, gsi = _float(meta.get("GST")), _float(meta.get("GSI"))
        hcf, hsw = _float(meta.get("HCF")), _float(meta.get("HSW"))
        xxlb, xxwi = _float(meta.get("XXLB")), _float(meta.get("XXWI"))
        two_d_xx = (
            xxlb is not None and xxwi is not None and (two_d or ("XYLB" in meta and "XYWI" in meta))
        )
        from_xx = False
        if two_d_xx:
            start, width, from_xx = xxlb, xxwi, True
        elif gst is not None and gsi is not None:
            start, width = gst, gsi
        elif hcf is not None and hsw is not None:
            start, width = hcf - hsw / 2, hsw
        elif xxlb is not None and xxwi is not None:
            start, width, from_xx = xxlb, xxwi, True
        elif gst is not None or hcf is not None:
            width = 50.0
            start = gst if gst is not None else hcf - 25.0  # type: ignore[operator]
            ref = "GST" if gst is not None else "HCF"
            notes.append(
                f"no sweep width in file (no GSI/HSW): assumed HSW = 50 G from {ref} "
                "(EasySpin eprload behaviour)"
            )
        else:
            raise _err(
                par, "no field range (GST/GSI, HCF/HSW or XXLB/XXWI); expected a field sweep"
            )
        if "JUN" in meta:
            factor = _field_factor(par, meta["JUN"], "JUN")
        elif from_xx and meta.get("XXUN", "").strip():
            factor = _field_factor(par, meta["XXUN"], "XXUN")
        else:
            # gauss, the format's default (EasySpin's eprload too): a note, no warning
            factor = _unstated_unit(field_unit, notes, "no JUN in .par")[1]
        self.axis = np.linspace(start, start + width, nx) * factor  # type: ignore[operator]

        self.y_values = None
        if two_d:
            xylb, xywi = _float(meta.get("XYLB")), _float(meta.get("XYWI"))
            if xylb is not None and xywi is not None:
                self.y_values = np.linspace(xylb, xylb + xywi, ny)

    def slice(self, index: int | None) -> Spectrum:
        n, meta = self.n_slices, self.meta
        index = _slice_index(self.par, index, n)
        notes = list(self.notes)
        out_meta = dict(meta)
        power = _float(meta.get("MP"))
        if n > 1:
            out_meta["slice_index"] = str(index)
            out_meta["n_slices"] = str(n)
            desc = f"slice {index} of {n}"
            if self.y_values is not None:
                y = float(self.y_values[index])
                name = meta.get("JEY", "y").strip() or "y"
                unit = meta.get("XYUN", "").strip()
                out_meta["slice_y_value"] = repr(y)
                out_meta["slice_y_unit"] = unit
                desc += f" ({name} = {y:g} {unit})".rstrip()
                if unit.lower() in _POWER_UNITS:
                    power = y * _POWER_UNITS[unit.lower()]
            notes.append(desc)
        return _make(
            self.spc,
            self.fmt,
            self.axis,
            self.data[index],
            out_meta,
            notes,
            frequency_ghz=_float(meta.get("MF")),
            modulation_amplitude_g=_float(meta.get("RMA")),
            power_mw=power,
            title=meta.get("TITL") or meta.get("JCO"),
        )


# --------------------------------------------------------------------------- #
# Magnettech (Freiberg Instruments / Bruker MS-5000, ESR5000): ESRStudio XML
# --------------------------------------------------------------------------- #
_MAX_XML_BYTES = 512 * 1024 * 1024  # a 2D series of 100,000-point curves is ~20 MB
# Recipe types whose spectra are field sweeps (each file holds one measurement of the series)
_MT_FIELD_RECIPES = (
    "single",
    "temperature",
    "goniometric",
    "modulationSweep",
    "powerSweep",
    "xRay",
)


_B64_GROUP = re.compile(r"[A-Za-z0-9+/]+=*")


def _b64_float64(path: Path, name: str, text: str | None) -> np.ndarray:
    """A Magnettech curve body: base64 groups of one little-endian float64 each (ESRStudio
    writes 12 characters with one '=' pad per value), or one base64 stream of float64.

    Each padded group is decoded on its own: decoding the whole text at once would stop
    at the first pad and silently return one value.
    """
    import binascii

    s = "".join((text or "").split())
    groups = _B64_GROUP.findall(s)
    if sum(map(len, groups)) != len(s):
        bad = _B64_GROUP.sub("", s)[:10]
        raise _err(
            path, f"curve {name!r} is not valid base64 (characters {bad!r}); expected float64 data"
        )
    try:
        raw = b"".join(binascii.a2b_base64(g) for g in groups)
    except (binascii.Error, ValueError) as exc:
        raise _err(
            path, f"curve {name!r} is not valid base64 ({exc}); expected float64 data"
        ) from None
    if len(raw) % 8:
        raise _err(path, f"curve {name!r} decodes to {len(raw)} bytes, not whole float64 values")
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)


class _OneSpectrum:
    """A format that holds one spectrum: the reader sets ``axis`` (G), ``values``,
    ``meta``, ``notes`` and what it knows of the rest."""

    n_slices = 1
    fmt = ""
    frequency: float | None = None
    modamp: float | None = None
    power: float | None = None
    title: str | None = None

    def slice(self, index: int | None) -> Spectrum:
        _slice_index(self.path, index, 1)
        return _make(
            self.path,
            self.fmt,
            self.axis,
            self.values,
            self.meta,
            list(self.notes),
            frequency_ghz=self.frequency,
            modulation_amplitude_g=self.modamp,
            power_mw=self.power,
            title=self.title,
        )


class _MagnettechXML(_OneSpectrum):
    """An ESRStudio ``.xml`` file: the MW_Absorption curve against the field, which is
    the BField curve (the Hall probe's reading in time) interpolated at the signal's
    times, kept inside the recipe's Bfrom..Bto (as EasySpin's eprload and cwepr)."""

    fmt = "Magnettech"

    def __init__(self, path: Path, field_unit: str | None = None):
        import xml.etree.ElementTree as ET

        self.path = path
        size = _file_size(path, "a Magnettech ESRStudio XML file (.xml)")
        if size > _MAX_XML_BYTES:
            raise _err(path, f"file has {size} bytes; a Magnettech XML spectrum is far smaller")
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise _err(
                path, f"not well-formed XML ({exc}); expected a Magnettech ESRStudio file"
            ) from None
        if root.tag != "ESRXmlFile":
            raise _err(
                path,
                f"XML root element is <{root.tag}>, not <ESRXmlFile>; the .xml files read here "
                "are Magnettech (ESRStudio) spectra",
            )
        meas = root.find("Data/Measurement")
        if meas is None:
            raise _err(path, "no <Data><Measurement> element; expected a Magnettech measurement")
        self.meta: dict[str, str] = {k: v for k, v in meas.attrib.items()}
        params: dict[str, tuple[str, str]] = {}
        recipe = meas.find("Recipe")
        rtype = None
        if recipe is not None:
            rtype = recipe.get("Type")
            for p in recipe.iterfind("Parameters/Param"):
                name = p.get("Name")
                if name:
                    params[name] = ((p.text or "").strip(), (p.get("Unit") or "").strip())
                    # the Measurement's attributes win (an old ESRStudio writes an empty
                    # Param "Mode" beside the Measurement's Mode)
                    self.meta.setdefault(name, (p.text or "").strip())
            if rtype:
                self.meta["RecipeType"] = rtype
        if rtype is not None and rtype not in _MT_FIELD_RECIPES:
            raise _err(
                path,
                f"Recipe Type={rtype!r}: not a magnetic-field sweep; expected one of "
                f"{', '.join(_MT_FIELD_RECIPES)} (a cw-EPR field sweep)",
            )
        if params.get("BHoldEnabled", ("",))[0].lower() == "true":
            raise _err(
                path,
                "BHoldEnabled=True: the field was held (a time trace), not swept; expected a "
                "field sweep",
            )
        curves: dict[tuple[str, str], ET.Element] = {}
        for c in meas.iterfind("DataCurves/Curve"):
            curves.setdefault((c.get("YType", ""), c.get("Mode", "")), c)
        seen = sorted({k[0] for k in curves}) or ["none"]
        field_c = curves.get(("BField", "Pre")) or next(
            (c for (t, _), c in curves.items() if t == "BField"), None
        )
        data_c = next((c for (t, m), c in curves.items() if t == "MW_Absorption"), None)
        if field_c is None or data_c is None:
            missing = "BField" if field_c is None else "MW_Absorption"
            raise _err(
                path,
                f"no {missing} curve (curves: {', '.join(seen)}); expected a field sweep with "
                "BField and MW_Absorption curves",
            )
        for c in (field_c, data_c):
            comp = c.get("Compression", "Base64")
            if comp != "Base64":
                raise _err(
                    path,
                    f"curve {c.get('YType')!r} has Compression={comp!r}; only Base64 is known",
                )
        notes: list[str] = []
        self.notes = notes
        b = _b64_float64(path, "BField", field_c.text)
        y = _b64_float64(path, "MW_Absorption", data_c.text)
        if b.size < 2 or y.size < 2:
            raise _err(
                path,
                f"BField has {b.size} and MW_Absorption {y.size} values; expected a sweep "
                "of at least 2 points each",
            )
        _check_finite(path, b, "BField curve values")
        t_b = self._times(field_c, b.size)
        t_y = self._times(data_c, y.size)
        # the signal's points recorded while the field was measured (no extrapolation)
        inside = (t_y >= t_b[0]) & (t_y <= t_b[-1])
        b_unit = (field_c.get("YUnit") or meas.get("XUnit") or "").strip()
        if b_unit:
            factor = _field_factor(path, b_unit, "BField YUnit")
        else:
            factor = _unstated_unit(field_unit, notes, "no BField YUnit")[1]
        field = np.interp(t_y[inside], t_b, b) * factor
        values = y[inside]
        lo_hi = []
        for key in ("Bfrom", "Bto"):
            text, unit = params.get(key, ("", ""))
            v = _float(text)
            lo_hi.append(
                None
                if v is None
                else v * _field_factor(path, unit or b_unit or "mT", f"{key} Unit")
            )
        if None not in lo_hi:
            lo, hi = sorted(lo_hi)  # type: ignore[type-var]
            keep = (field >= lo) & (field <= hi)
            dropped = int(field.size - np.count_nonzero(keep))
            field, values = field[keep], values[keep]
            notes.append(
                f"field from the BField curve interpolated at the signal's {y.size} times; "
                f"{dropped} points outside Bfrom..Bto ({lo:g}-{hi:g} G) dropped"
            )
        else:
            notes.append("field from the BField curve; no Bfrom/Bto in the recipe, nothing cut")
        if field.size < 2:
            raise _err(path, "fewer than 2 signal points inside the swept field range Bfrom..Bto")
        self.axis, self.values = field, values
        mod_text, mod_unit = params.get("Modulation", ("", ""))
        mod = _float(mod_text)
        self.modamp = mod * _FIELD_UNITS.get(mod_unit.lower(), 10.0) if mod is not None else None
        pw_text, pw_unit = params.get("MicrowavePower", ("", ""))
        pw = _float(pw_text)
        self.power = pw * _POWER_UNITS.get(pw_unit.lower(), 1.0) if pw is not None else None
        self.frequency = _float(meas.get("MwFreq"))
        self.title = meas.get("Name")

    def _times(self, curve, n: int) -> np.ndarray:
        off, slope = _float(curve.get("XOffset")), _float(curve.get("XSlope"))
        if off is None or slope is None or not slope > 0:
            raise _err(
                self.path,
                f"curve {curve.get('YType')!r} has XOffset={curve.get('XOffset')!r}, "
                f"XSlope={curve.get('XSlope')!r}; expected numbers, XSlope > 0",
            )
        return off + slope * np.arange(n)


# --------------------------------------------------------------------------- #
# CIQTEK (EPR200M, EPR-X, ...): JSON ``.epr``
# --------------------------------------------------------------------------- #
_MAX_JSON_BYTES = 512 * 1024 * 1024


def _load_json(path: Path, what: str):
    import json

    size = _file_size(path, what)
    if size > _MAX_JSON_BYTES:
        raise _err(path, f"file has {size} bytes; expected {what}, far smaller")
    raw = path.read_bytes()
    if raw[:6] == b"7z\xbc\xaf\x27\x1c":
        raise _err(
            path,
            f"a 7-Zip archive, not JSON; extract it first (7z x {path.name}) and read the "
            "file inside",
        )
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _err(path, f"not UTF-8 text; expected {what} (JSON)") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise _err(path, f"not valid JSON ({exc}); expected {what}") from None


def _pairs(path: Path, entry: dict, key: str, where: str) -> np.ndarray:
    """An (n, 2) float array from a JSON list of [x, y] pairs, or a clean error."""
    value = entry.get(key)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros((0,))
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 2:
        raise _err(
            path,
            f"{where}.{key} is not a list of [field, intensity] pairs (at least 2); "
            "expected CIQTEK data",
        )
    return arr


class _CIQTEK:
    """A CIQTEK ``.epr`` file: ``dataStore.lineDataList``, one entry per trace, each with
    ``ReData`` ([field, in-phase] pairs) and ``ImData`` (quadrature, not used); the
    field unit from ``dataStore.xAxisName`` ("Field[G]"), settings in ``setting``."""

    def __init__(self, path: Path, field_unit: str | None = None):
        self.path = path
        doc = _load_json(path, "a CIQTEK EPR file (.epr, JSON)")
        store = doc.get("dataStore") if isinstance(doc, dict) else None
        lines = store.get("lineDataList") if isinstance(store, dict) else None
        if not isinstance(lines, list) or not lines or not all(isinstance(e, dict) for e in lines):
            raise _err(
                path,
                "no dataStore.lineDataList of traces; expected a CIQTEK EPR file (JSON)",
            )
        setting = doc.get("setting") if isinstance(doc.get("setting"), dict) else {}
        self.meta = {str(k): str(v) for k, v in setting.items()}
        for key in ("type", "devicename", "name", "createTime", "_dataVersion"):
            if key in doc:
                self.meta[key] = str(doc[key])
        exp_type = str(doc.get("type", ""))
        x_name = str(store.get("xAxisName", ""))
        self.meta["xAxisName"] = x_name
        notes: list[str] = []
        self.notes = notes
        # the x axis decides (a 2D time-field sweep has xAxisName "Time[ms]"); the
        # experiment type only where the file names no axis
        named = x_name.strip() or exp_type
        other = _non_field_unit(x_name)
        if "field" not in named.lower() or other is not None:
            raise _err(
                path,
                f"xAxisName={x_name!r}, type={exp_type!r}: not a magnetic-field sweep; "
                "expected a CW EPR field sweep (xAxisName Field[G] or Field[mT])",
            )
        unit = _unit_in(x_name)
        self.unit_assumed = unit is None and field_unit is None
        if unit is None:
            unit = _unstated_unit(field_unit, notes, "no unit in xAxisName")[0]
        factor = _field_factor(path, unit, "xAxisName unit")
        self.slices = []
        for i, entry in enumerate(lines):
            pairs = _pairs(path, entry, "ReData", f"lineDataList[{i}]")
            _check_finite(path, pairs, f"lineDataList[{i}].ReData values")
            self.slices.append((pairs[:, 0] * factor, pairs[:, 1], entry))
        if any("ImData" in e for e in lines):
            notes.append("in-phase trace (ReData) used; quadrature (ImData) ignored")
        # a trace stored twice (EasySpin's CIQTEK_2D.epr ends with its last slice again)
        self.repeats: dict[int, int] = {}
        for i, (f_i, y_i, _) in enumerate(self.slices):
            for j, (f_j, y_j, _) in enumerate(self.slices[:i]):
                if j not in self.repeats and np.array_equal(f_i, f_j) and np.array_equal(y_i, y_j):
                    self.repeats[i] = j
                    break
        self.n_slices = len(self.slices)
        self.frequency = _float(setting.get("frequency"))
        if self.frequency is None:
            self.frequency = _float(lines[0].get("freq"))
        self.modamp = _float(setting.get("lineEdit_SC_ModulAmp"))
        self.power = _float(setting.get("lineEdit_MB_Power"))
        self.title = str(doc.get("name") or doc.get("filename") or "") or None

    def slice(self, index: int | None) -> Spectrum:
        n = self.n_slices
        index = _slice_index(self.path, index, n)
        field, values, entry = self.slices[index]
        notes = list(self.notes)
        meta = dict(self.meta)
        power = self.power
        freq = _float(entry.get("freq")) or self.frequency
        if n > 1:
            meta["slice_index"] = str(index)
            meta["n_slices"] = str(n)
            desc = f"slice {index} of {n}"
            params = entry.get("params") if isinstance(entry.get("params"), dict) else {}
            for key in ("power", "delay", "time2"):  # the 2D axes seen in CIQTEK files
                v = _float(params.get(key))
                if v is not None:
                    meta["slice_y_value"] = repr(v)
                    meta["slice_y_name"] = key
                    desc += f" ({key} = {v:g})"
                    if key == "power":
                        power = v
                    break
            if index in self.repeats:
                desc += f": the same data as slice {self.repeats[index]} (stored twice)"
            notes.append(desc)
        return _make(
            self.path,
            "CIQTEK",
            field,
            values,
            meta,
            notes,
            frequency_ghz=freq,
            modulation_amplitude_g=self.modamp,
            power_mw=power,
            title=self.title,
            field_unit_assumed=self.unit_assumed,
        )


# --------------------------------------------------------------------------- #
# Adani (SPINSCAN, CMS 8400; e-Spinoza software): JSON ``.json``
# --------------------------------------------------------------------------- #
def _number(path: Path, obj: dict, key: str, where: str) -> float:
    v = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise _err(path, f"{where}{key} is {v!r}; expected a number (an Adani e-Spinoza file)")
    return float(v)


class _AdaniJSON:
    """An e-Spinoza ``.json`` file; ``Values`` holds one spectrum per slice of a 2D run,
    the field axis is ``CenterMagneticField`` +- ``SweepWidth`` / 2 (mT) over the points.

    Each field point holds ``Points``: the detector's n samples over one modulation
    period (older files, n = 14 in EasySpin's 1d.json), or the lock-in's two outputs
    (newer files, n = 2, with ``PhaseRadians``). Both are reduced to the first
    harmonic's in-phase and quadrature parts (I, Q): for n samples the projections on
    sin and cos(2 pi k / n), for n = 2 the two values. EasySpin's eprload takes
    cos(phi) I + sin(phi) Q (its sum over sin(2 pi k / n + Phase)); the stored phase need
    not be the signal's (on EasySpin's Mn.json it is 18 degrees off, and eprload's n = 2
    form returns the signal inverted at half its amplitude). The modulation phase scales
    the first-derivative line, it does not change its shape, so the signal is taken along
    the principal direction of (I, Q) over the file, with the sign of cos(phi) I +
    sin(phi) Q.
    """

    def __init__(self, path: Path, field_unit: str | None = None):
        self.path = path
        doc = _load_json(path, "an Adani e-Spinoza file (.json)")
        opts = doc.get("ExperimentOptions") if isinstance(doc, dict) else None
        common = opts.get("CommonOptions") if isinstance(opts, dict) else None
        spectra = doc.get("Values") if isinstance(doc, dict) else None
        if not isinstance(common, dict) or not isinstance(spectra, list) or not spectra:
            raise _err(
                path,
                "no ExperimentOptions.CommonOptions and Values; the .json files read here are "
                "Adani e-Spinoza spectra",
            )
        where = "ExperimentOptions.CommonOptions."
        centre = _number(path, common, "CenterMagneticField", where)
        width = _number(path, common, "SweepWidth", where)
        phase_key = next((k for k in ("Phase", "PhaseRadians") if k in doc), "Phase")
        phase = doc.get(phase_key, 0.0)
        if isinstance(phase, bool) or not isinstance(phase, (int, float)) or not np.isfinite(phase):
            raise _err(path, f"{phase_key} is {phase!r}; expected a number (radians)")
        self.data = []
        n_phase = None
        for i, spec in enumerate(spectra):
            points = spec.get("Values") if isinstance(spec, dict) else None
            if not isinstance(points, list) or len(points) < 2:
                raise _err(
                    path,
                    f"Values[{i}].Values is not a list of field points (at least 2); expected "
                    "an Adani e-Spinoza file",
                )
            try:
                frames = np.asarray([p["Points"] for p in points], dtype=np.float64)
            except (TypeError, KeyError, ValueError):
                raise _err(
                    path,
                    f"Values[{i}]: every field point needs a Points list of the same length "
                    "(the detector samples over one modulation period)",
                ) from None
            if frames.ndim != 2 or frames.shape[1] < 2:
                raise _err(
                    path,
                    f"Values[{i}]: Points lists of {frames.shape} samples; expected at least 2 each",
                )
            if n_phase is not None and frames.shape != self.data[0].shape:
                raise _err(
                    path,
                    f"Values[{i}] has {frames.shape[0]} points x {frames.shape[1]} samples, "
                    f"Values[0] {self.data[0].shape[0]} x {self.data[0].shape[1]}; expected "
                    "equal slices",
                )
            _check_finite(path, frames, f"Values[{i}] samples")
            n_phase = frames.shape[1]
            self.data.append(frames)
        if n_phase == 2:  # the lock-in's in-phase and quadrature outputs
            iq = self.data
            source = "the 2 values per point (lock-in I, Q)"
        else:  # samples over one modulation period: the first harmonic's I, Q
            k = 2.0 * np.pi * np.arange(n_phase) / n_phase
            ref = np.stack([np.sin(k), np.cos(k)], axis=1)
            iq = [frames @ ref for frames in self.data]
            source = f"the {n_phase} samples per point (first harmonic I, Q)"
        stacked = np.concatenate(iq)
        _, sv, vt = np.linalg.svd(stacked - np.median(stacked, axis=0), full_matrices=False)
        direction = vt[0]
        stored = np.array([np.cos(float(phase)), np.sin(float(phase))])
        if direction @ stored < 0:
            direction = -direction
        self.signals = [x @ direction for x in iq]
        share = float(sv[0] ** 2 / max(float(np.sum(sv**2)), 1e-300))
        off = np.degrees(np.arccos(np.clip(abs(direction @ stored), 0.0, 1.0)))
        n_points = self.data[0].shape[0]
        notes: list[str] = [
            f"signal: {source} along their principal direction ({100 * share:.0f} % of the "
            f"variance), {off:.0f} degrees from the stored {phase_key}={float(phase):g}"
        ]
        self.notes = notes
        # e-Spinoza gives the field in mT (an X-band centre is ~ 337 mT); a file cannot say
        unit = field_unit or "mT"
        if field_unit is None:
            notes.append("field in mT (e-Spinoza's unit; the file names none)")
        factor = _FIELD_UNITS[unit.lower()]
        self.axis = (centre + np.linspace(-0.5, 0.5, n_points) * width) * factor
        self.n_slices = len(self.data)
        self.meta = {
            f"{where}{k}": str(v) for k, v in common.items() if not isinstance(v, (dict, list))
        }
        for key in ("Phase", "MwFrequencyKHz", "NoiseLevel"):
            if key in doc:
                self.meta[key] = str(doc[key])
        for key in ("ExperimentType", "InitialValue2D", "FinalValue2D", "Count2D"):
            if isinstance(opts, dict) and key in opts:
                self.meta[f"ExperimentOptions.{key}"] = str(opts[key])
        freq = doc.get("MwFrequencyKHz")
        self.frequency = (
            float(freq) * 1e-6
            if isinstance(freq, (int, float)) and not isinstance(freq, bool) and freq > 0
            else None
        )
        mw = common.get("MwParameter") if isinstance(common.get("MwParameter"), dict) else {}
        power = mw.get("PowerMW")
        self.power = float(power) if isinstance(power, (int, float)) and power > 0 else None
        self.y_values = None
        if self.n_slices > 1 and isinstance(opts, dict):
            lo, hi = opts.get("InitialValue2D"), opts.get("FinalValue2D")
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
                self.y_values = np.linspace(float(lo), float(hi), self.n_slices)

    def slice(self, index: int | None) -> Spectrum:
        n = self.n_slices
        index = _slice_index(self.path, index, n)
        notes = list(self.notes)
        meta = dict(self.meta)
        if n > 1:
            meta["slice_index"] = str(index)
            meta["n_slices"] = str(n)
            desc = f"slice {index} of {n}"
            if self.y_values is not None:
                y = float(self.y_values[index])
                meta["slice_y_value"] = repr(y)
                desc += f" (2D value {y:g})"
            notes.append(desc)
        return _make(
            self.path,
            "Adani",
            self.axis,
            self.signals[index],
            meta,
            notes,
            frequency_ghz=self.frequency,
            modulation_amplitude_g=None,
            power_mw=self.power,
            title=None,
        )


# --------------------------------------------------------------------------- #
# Active Spectrum (benchtop ESR): tab-separated ``.ESR`` text
# --------------------------------------------------------------------------- #
class _ActiveSpectrum(_OneSpectrum):
    """An Active Spectrum ``.ESR`` file: ``KEY<tab>value`` header lines, then a
    ``FIELD (G)<tab>INTENSITY`` line, then rows of field, the averaged intensity and
    the individual sweeps (one column each). The averaged column is the spectrum."""

    fmt = "ActiveSpectrum"

    def __init__(self, path: Path, field_unit: str | None = None):
        self.path = path
        lines = _read_text_lines(path, "an Active Spectrum file (.ESR, tab-separated text)")
        start = next(
            (i for i, line in enumerate(lines) if line.strip().upper().startswith("FIELD (")),
            None,
        )
        if start is None:
            raise _err(
                path,
                "no 'FIELD (G)' line before the data; expected an Active Spectrum .ESR file",
            )
        meta: dict[str, str] = {}
        rows_by_key: dict[str, list[str]] = {}
        for line in lines[:start]:
            cells = [c.strip() for c in line.split("\t")]
            if cells and cells[0]:
                rows_by_key[cells[0].upper()] = cells[1:]
                meta[cells[0]] = next((c for c in cells[1:] if c), "")
        head = lines[start].split("\t")[0]
        unit = _unit_in(head)
        if unit is None:
            raise _err(
                path,
                f"line {start + 1} ({head.strip()!r}) names no field unit G or mT; expected "
                "'FIELD (G)'",
            )
        factor = _field_factor(path, unit, "FIELD unit")
        rows = []
        for lineno, line in enumerate(lines[start + 1 :], start=start + 2):
            cells = [c for c in line.replace("\t", " ").split() if c]
            if not cells:
                continue
            try:
                rows.append([float(cells[0]), float(cells[1])])
            except (ValueError, IndexError):
                raise _err(
                    path,
                    f"line {lineno} ({line.strip()[:40]!r}) is not a field and an intensity; "
                    "expected numeric rows after the FIELD line",
                ) from None
        if len(rows) < 2:
            raise _err(path, f"{len(rows)} data row(s) after the FIELD line; expected a sweep")
        table = np.asarray(rows)
        notes: list[str] = []
        n_sweeps = _float(meta.get("NUMBER OF SWEEPS"))
        notes.append(
            "averaged intensity column used"
            + (f" (mean of {n_sweeps:g} sweeps)" if n_sweeps else "")
        )
        n_stated = _float(meta.get("NUMBER OF POINTS"))
        if n_stated is not None and int(n_stated) != table.shape[0]:
            notes.append(
                f"header says {n_stated:g} points, the file has {table.shape[0]} data rows"
            )
        self.axis, self.values = table[:, 0] * factor, table[:, 1]
        self.meta, self.notes = meta, notes
        freq = rows_by_key.get("FREQUENCY (MHZ)", [])
        self.frequency = _float(freq[0]) / 1e3 if freq and _float(freq[0]) else None
        self.power = _float(meta.get("MICROWAVE POWER (mW)"))
        self.title = meta.get("SAMPLE NAME") or None


# --------------------------------------------------------------------------- #
# Magnettech MiniScope (MS400 and older, MT500 L-band): binary ``.spe``
# --------------------------------------------------------------------------- #
_SPE_POINTS = (512, 1024, 2048, 4096)


class _MagnettechSPE(_OneSpectrum):
    """An older Magnettech ``.spe`` file, laid out as EasySpin's eprload describes it:
    n little-endian int16 values (n = 512, 1024, 2048 or 4096), then a 64-byte trailer of
    "four-byte singles" (int16 a, int16 b: a + b/100, or b/1000 in the newer variant,
    bit 2 of the flags byte): centre field (G), sweep width (G), modulation (0.1 uT units),
    ..., the flags byte at 60 and the frequency in kHz (3 bytes, big-endian) at 61.
    Checked here on synthetic files only: no real ``.spe`` file was at hand."""

    fmt = "MagnettechSPE"

    def __init__(self, path: Path, field_unit: str | None = None):
        self.path = path
        size = _file_size(path, "a Magnettech .spe file")
        n = (size - 64) // 2
        if (size - 64) % 2 or n not in _SPE_POINTS:
            raise _err(
                path,
                f"file has {size} bytes; a Magnettech .spe file has 2 bytes per point for "
                f"{', '.join(map(str, _SPE_POINTS))} points plus 64 (2 * n + 64)",
            )
        raw = path.read_bytes()
        self.values = np.frombuffer(raw, dtype="<i2", count=n).astype(np.float64)
        tail = raw[2 * n :]
        flags = tail[60]
        new = bool(flags & 2)
        pairs = np.frombuffer(tail[:52], dtype="<i2").astype(np.float64).reshape(13, 2)
        singles = pairs[:, 0] + pairs[:, 1] / (1000.0 if new else 100.0)
        centre, width, modulation = singles[0], singles[1], singles[2]
        if not (np.isfinite(centre) and width > 0):
            raise _err(
                path,
                f"trailer gives centre field {centre:g} G and sweep width {width:g} G; "
                "expected a positive sweep width (a Magnettech .spe file?)",
            )
        self.axis = centre + np.linspace(-0.5, 0.5, n) * width
        self.modamp = modulation / 1000.0  # 0.1 uT units -> G
        self.frequency = (
            int.from_bytes(tail[61:64], "big") / 1e6 if flags & 1 else None
        )  # kHz -> GHz
        names = ("B0_Field", "B0_Scan", "Modulation", "MW_Attenuation", "ScanTime")
        self.meta = {k: repr(float(v)) for k, v in zip(names, singles[:5], strict=True)}
        self.meta["FileFlags"] = str(flags)
        self.notes = [
            f"{'newer' if new else 'older'} .spe variant (flags {flags}); layout as EasySpin's "
            "eprload (not checked on a real file here)"
        ]


# --------------------------------------------------------------------------- #
# text
# --------------------------------------------------------------------------- #
_SPLIT_RE = re.compile(r"[,;\t ]+")
_UNIT_PATTERNS = (
    (re.compile(r"(?<![A-Za-z])mT(?![A-Za-z])"), "mT"),
    (re.compile(r"\[\s*G\s*\]|\(\s*G\s*\)|(?i:\bgauss\b)"), "G"),
    (re.compile(r"\[\s*T\s*\]|\(\s*T\s*\)|(?i:\btesla\b)"), "T"),
    (re.compile(r"\[\s*Oe\s*\]|\(\s*Oe\s*\)|(?i:\boersted\b)"), "Oe"),
)


def _unit_in(text: str) -> str | None:
    for pattern, unit in _UNIT_PATTERNS:
        if pattern.search(text):
            return unit
    return None


# units that say a column is not a magnetic field (time, frequency, power, angle, ...)
_NON_FIELD_UNITS = {
    "s", "ms", "us", "µs", "μs", "ns", "ps", "min", "h",
    "hz", "khz", "mhz", "ghz", "db", "deg", "°", "rad", "k", "w", "mw", "uw", "µw", "μw",
}  # fmt: skip
_BRACKET_RE = re.compile(r"\[([^\]]*)\]|\(([^)]*)\)")


def _non_field_unit(name: str) -> str | None:
    """A bracketed unit in a column name that is clearly not a field unit, else None."""
    for m in _BRACKET_RE.finditer(name):
        unit = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        if unit.lower() in _NON_FIELD_UNITS:
            return unit
    return None


_DECIMAL_COMMA_TOKEN = re.compile(r"^[-+]?(?:\d+(?:,\d+)?|,\d+)(?:[eE][-+]?\d+)?$")
_DECIMAL_COMMA_SPLIT = re.compile(r"[;\t ]+")


def _uses_decimal_comma(lines: list[str]) -> bool:
    """True when every data-looking line is ';'/tab/space separated numbers with decimal commas."""
    seen_comma = False
    n_rows = 0
    for line in lines:
        s = line.strip()
        if not s or s.startswith(("#", "%", "//")):
            continue
        tokens = [t for t in _DECIMAL_COMMA_SPLIT.split(s) if t]
        if len(tokens) >= 2 and all(_DECIMAL_COMMA_TOKEN.match(t) for t in tokens):
            seen_comma = seen_comma or "," in s
            n_rows += 1
            continue
        try:  # a row of numbers in the usual convention: not a decimal-comma file
            [float(t) for t in _SPLIT_RE.split(s) if t]
        except ValueError:
            continue  # header or other text
        return False
    return seen_comma and n_rows >= 2


def _column_names(header: list[str], ncol: int) -> list[str] | None:
    """Names of the columns from the last header line, if it splits into ``ncol`` names."""
    if not header:
        return None
    names = [n.strip() for n in re.split(r"\t|,|;|\s{2,}", header[-1]) if n.strip()]
    return names if len(names) == ncol else None


class _Text:
    """A text export: one table, or several blocks (WinEPR 2D export: 'Slice N' + header each).

    A 2D table with a slice column (field repeating, a y column constant per sweep) is split
    into slices as well.
    """

    def __init__(self, path: Path, field_unit: str | None = None):
        self.path = path
        self.field_unit = field_unit
        lines = _read_text_lines(path, "a text export (columns of numbers)")
        self.decimal_comma = _uses_decimal_comma(lines)
        split_re = _DECIMAL_COMMA_SPLIT if self.decimal_comma else _SPLIT_RE
        blocks: list[tuple[list[str], list[list[float]]]] = []
        header: list[str] = []
        rows: list[list[float]] = []
        first_row_line = 0
        after_data: tuple[int, str] | None = None  # first text line after a block of rows
        for lineno, line in enumerate(lines, start=1):
            s = line.strip()
            if not s:
                continue
            if s.startswith(("#", "%", "//")):
                if not rows:
                    header.append(s.lstrip("#%/ "))
                continue
            tokens = [t for t in split_re.split(s) if t]
            if self.decimal_comma:
                tokens = [t.replace(",", ".") for t in tokens]
            try:
                numbers = [float(t) for t in tokens]
            except ValueError:
                if rows:  # text after data: a new block starts (or a trailer, checked below)
                    blocks.append((header, rows))
                    header, rows = [], []
                    after_data = (lineno, s)
                header.append(s)
                continue
            ncol_ref = len(rows[0]) if rows else (len(blocks[0][1][0]) if blocks else None)
            if ncol_ref is not None and len(numbers) != ncol_ref:
                raise _err(
                    path,
                    f"line {lineno} has {len(numbers)} columns but line {first_row_line} has "
                    f"{ncol_ref}; expected a rectangular table",
                )
            if not rows and not blocks:
                first_row_line = lineno
            rows.append(numbers)
        if rows:
            blocks.append((header, rows))
        elif blocks and after_data is not None:
            lineno, s = after_data
            raise _err(
                path,
                f"line {lineno} is not numeric ({s[:40]!r}); expected only data rows after the header",
            )
        if not blocks:
            text = [(i, t.strip()) for i, t in enumerate(lines, 1) if t.strip()]
            # show a line with numbers and text (a table with a text column), else the first
            shown = next((x for x in text if re.search(r"\d", x[1])), text[0] if text else None)
            which = (
                f"each of its {len(text)} non-empty lines has"
                if len(text) > 1
                else ("its one line has")
            )
            seen = (
                f"{which} text in it (line {shown[0]}: {shown[1][:60]!r})"
                if shown
                else "it holds no data"
            )
            raise _err(
                path,
                f"no numeric data rows found: {seen}; expected 2 (field, intensity) or 3 "
                "(index, field, intensity) numeric columns per row",
            )
        self.notes: list[str] = []
        if self.decimal_comma:
            self.notes.append("decimal commas read as decimal points")
        self._choose_columns(blocks)

    def _choose_columns(self, blocks: list[tuple[list[str], list[list[float]]]]) -> None:
        path, notes = self.path, self.notes
        header = blocks[0][0]
        first_table = np.asarray(blocks[0][1], dtype=np.float64)
        ncol = first_table.shape[1]
        if ncol < 2:
            raise _err(
                path,
                "only 1 numeric column; expected 2 (field, intensity) or 3 (index, field, intensity)",
            )
        names = _column_names(header, ncol)
        fcol = icol = None
        if names is not None:
            lower = [n.lower() for n in names]
            by_unit = [i for i, n in enumerate(names) if _unit_in(n)]
            by_name = [i for i, n in enumerate(lower) if "field" in n or n.startswith("b ")]
            field_cands = by_unit or by_name
            int_cands = [i for i, n in enumerate(lower) if "intens" in n or "signal" in n]
            if len(field_cands) == 1:
                fcol = field_cands[0]
                rest = [i for i in int_cands if i != fcol]
                if rest:
                    icol = rest[0]
                    if len(rest) > 1:
                        notes.append(f"several intensity columns: {names[icol]!r} used")
                elif ncol == 2:
                    icol = 1 - fcol
                elif fcol + 1 < ncol:
                    icol = fcol + 1
                    notes.append(
                        f"no intensity column named: column {icol + 1} ({names[icol]!r}) used"
                    )
        if fcol is None or icol is None:
            if ncol == 2:
                fcol, icol = 0, 1
            else:
                col0 = first_table[:, 0]
                looks_index = (
                    np.all(col0 == np.round(col0)) and col0.size > 1 and np.all(np.diff(col0) == 1)
                )
                named_index = bool(header) and "index" in header[-1].lower()
                if looks_index or named_index:
                    fcol, icol = 1, 2
                else:
                    fcol, icol = 0, 1
                    notes.append(
                        f"{ncol} columns without an index column: columns 1 and 2 used as "
                        "field, intensity"
                    )
                if ncol > 3 or fcol == 0:
                    notes.append(f"extra columns ignored ({ncol} columns in file)")

        unit = None
        if names is not None:
            unit = _unit_in(names[fcol])
            other = _non_field_unit(names[fcol]) if unit is None else None
            if other is not None:
                raise _err(
                    path,
                    f"column {fcol + 1} ({names[fcol]!r}) has unit {other!r}, not a "
                    "magnetic field; expected a field sweep (field column in G, mT or T)",
                )
        if unit is None and header:
            unit = _unit_in("\n".join(header))
        self.unit_assumed = unit is None and self.field_unit is None
        if unit is None:
            unit = _unstated_unit(self.field_unit, notes, "no field unit in header")[0]
        self.unit = unit
        self.factor = _field_factor(path, unit, "field unit")
        self.fcol, self.icol, self.ncol, self.names = fcol, icol, ncol, names

        # a third, non-index column that is constant along each sweep: the slice (y) axis
        ycol = None
        if ncol >= 3:
            others = [c for c in range(ncol) if c not in (fcol, icol)]
            col0 = first_table[:, 0]
            if 0 in others and col0.size > 1 and np.all(np.diff(col0) == 1):
                others.remove(0)  # index column
            if len(others) == 1:
                ycol = others[0]
        self.ycol = ycol

        # slices: (header lines, table)
        slices: list[tuple[list[str], np.ndarray]] = []
        for head, rows in blocks:
            table = np.asarray(rows, dtype=np.float64)
            if ycol is not None and len(blocks) == 1 and table.shape[0] > 2:
                y = table[:, ycol]
                cuts = np.flatnonzero(np.diff(y) != 0) + 1
                parts = np.split(table, cuts)
                same_sweep = (
                    len(parts) > 1
                    and len({part.shape[0] for part in parts}) == 1
                    and parts[0].shape[0] >= 3
                    and all(np.allclose(q[:, fcol], parts[0][:, fcol]) for q in parts)
                )
                if same_sweep:
                    slices.extend((head, part) for part in parts)
                    continue
            slices.append((head, table))
        for _, table in slices:
            if table.shape[0] < 2:
                raise _err(path, "only 1 data row; expected a sweep of at least 2 points")
        self.slices = slices
        self.n_slices = len(slices)

    def slice(self, index: int | None) -> Spectrum:
        n = self.n_slices
        index = _slice_index(self.path, index, n)
        head, table = self.slices[index]
        notes = list(self.notes)
        meta = {
            "header": "\n".join(head),
            "field_unit": self.unit,
            "columns": str(self.ncol),
        }
        if n > 1:
            meta["slice_index"] = str(index)
            meta["n_slices"] = str(n)
            desc = f"slice {index} of {n}"
            if self.ycol is not None:
                y = float(table[0, self.ycol])
                name = self.names[self.ycol] if self.names else f"column {self.ycol + 1}"
                meta["slice_y_value"] = repr(y)
                desc += f" ({name} = {y:g})"
            notes.append(desc)
        return _make(
            self.path,
            "text",
            table[:, self.fcol] * self.factor,
            table[:, self.icol],
            meta,
            notes,
            frequency_ghz=None,
            modulation_amplitude_g=None,
            power_mw=None,
            title=None,
            field_unit_assumed=self.unit_assumed,
        )


# extension -> reader, in the order `_reader` tries them
_READERS = (
    (_BES3T_EXT, _BES3T),
    (_ESP_EXT, _ESP),
    (_MAGNETTECH_EXT, _MagnettechXML),
    (_SPE_EXT, _MagnettechSPE),
    (_CIQTEK_EXT, _CIQTEK),
    (_ADANI_EXT, _AdaniJSON),
    (_ACTIVE_SPECTRUM_EXT, _ActiveSpectrum),
    (_TEXT_EXT, _Text),
)

#: every file extension `read_spectrum` reads (lower case)
SPECTRUM_SUFFIXES = tuple(ext for exts, _ in _READERS for ext in exts)
# what the first 4 kB of a file with a generic extension hold when it is a spectrum
_SIGNATURES = {
    ".xml": (b"<ESRXmlFile",),
    ".json": (b'"ExperimentOptions"', b'"Values"'),
    ".epr": (b'"dataStore"', b'"lineDataList"', b"7z\xbc\xaf\x27\x1c"),
}


def looks_like_spectrum(path: str | os.PathLike) -> bool:
    """Whether a file found in a folder scan is worth reading: a supported extension,
    and for the generic ones (.xml, .json, .epr) the format's signature in its first 4 kB,
    so that other XML/JSON files beside the spectra (our own predictions.json among
    them) are not reported as unreadable spectra. A file named explicitly is always read.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in SPECTRUM_SUFFIXES:
        return False
    if ext not in _SIGNATURES:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return True  # let the reader report it
    return any(sig in head for sig in _SIGNATURES[ext])
