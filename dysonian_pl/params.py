"""The parameter table and the simulation presets.

One table (`PARAMETERS`) names every fitted quantity with its unit, hard bounds and
meaning; the simulator ranges, target scaling, fitter bounds, CLI help and report
labels are all read from it. `PRESETS` holds the prior work's six data sets
(physics.md) plus its generic default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

#: dB (G) at which the prior work switches from the Dysonian to the Joshi wide-line model.
WIDE_LINE_THRESHOLD_G = 1000.0

#: Sample geometries with a Dysonian line shape (lineshapes.dyson_coefficients).
GEOMETRIES = ("plate", "sphere")

#: The smallest field axis the simulator and the network accept.
MIN_POINTS = 128


@dataclass(frozen=True)
class Parameter:
    name: str
    unit: str
    description: str
    lower: float  # hard physical bound (exclusive for p and dB)
    upper: float = math.inf


PARAMETERS: dict[str, Parameter] = {
    "B0": Parameter("B0", "G", "resonance field (line centre)", 0.0),
    "dB": Parameter("dB", "G", "line width (plate: peak-to-peak width; sphere: half width)", 0.0),
    "p": Parameter("p", "", "skin-effect parameter (plate 2d/delta, sphere d/delta)", 0.0),
    "alpha": Parameter("alpha", "", "wide-line (Joshi) asymmetry", 0.0),
}


def unit_label(name: str) -> str:
    unit = PARAMETERS[name].unit
    return f"{name} ({unit})" if unit else name


class ConfigError(ValueError):
    """A configuration value outside what is allowed; the message names option, value and rule."""


_OPT = "data.sim."  # where users set these options in a run's YAML


def _range(
    name: str, value: tuple[float, float] | list[float], *, lower: float
) -> tuple[float, float]:
    name = _OPT + name
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected two numbers [min, max] (got {value!r})") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{name}: bounds must be finite (got [{lo}, {hi}])")
    if lo > hi:
        raise ConfigError(f"{name}: min must be <= max (got [{lo}, {hi}])")
    if lo <= lower:
        raise ConfigError(f"{name}: values must be > {lower:g} (got min {lo})")
    return lo, hi


@dataclass(frozen=True)
class Augmentations:
    """Augmentations in the prior work's order, each with its default and each switchable.

    Amplitudes are relative to the line's peak-to-peak amplitude (the clean line is
    normalised to peak-to-peak 1 before they are applied). Set a probability or an
    amplitude to 0 to switch an augmentation off.
    """

    smooth_prob: float = 0.05  # modulation broadening: Gaussian smoothing
    smooth_sigma_points: tuple[float, float] = (0.6, 2.5)
    field_scale: tuple[float, float] = (1.0, 1.0)  # calibration warp, prior default 0.998-1.002
    field_offset_g: float = (
        0.0  # +- G; the prior work's sets all ran with 0 (3.4x worse B0 otherwise)
    )
    baseline_offset: float = 0.01
    baseline_slope: float = 0.02
    baseline_curvature: float = 0.01
    noise: bool = True  # white noise at a signal-to-noise ratio drawn from snr_db
    snr_db: tuple[float, float] = (40.0, 60.0)
    spike_prob: float = 0.0
    spike_count: tuple[int, int] = (1, 2)
    spike_amplitude: tuple[float, float] = (0.01, 0.05)
    spike_half_width_points: tuple[float, float] = (1.0, 5.0)

    def __post_init__(self) -> None:
        for name in ("smooth_prob", "spike_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(
                    f"data.sim.augment.{name}: probability must be in [0, 1] (got {v})"
                )
        for name in ("field_offset_g", "baseline_offset", "baseline_slope", "baseline_curvature"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"data.sim.augment.{name}: amplitude must be >= 0 (got {v})")
        for name in (
            "smooth_sigma_points",
            "field_scale",
            "snr_db",
            "spike_count",
            "spike_amplitude",
            "spike_half_width_points",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"data.sim.augment.{name}: min must be <= max (got [{lo}, {hi}])")
        if self.field_scale[0] <= 0:
            raise ConfigError(f"data.sim.augment.field_scale: must be > 0 (got {self.field_scale})")


@dataclass(frozen=True)
class SimulationConfig:
    """What one simulated data set is: ranges, field axis, geometry and augmentations.

    Every spectrum is a pure function of (this config, seed, index).
    """

    B0: tuple[float, float] = (3300.0, 3400.0)
    dB: tuple[float, float] = (3.0, 100.0)
    p: tuple[float, float] = (0.2, 2.0)
    window: tuple[float, float] = (3256.0, 3455.9)
    n_points: int = 4096
    geometry: str = "plate"
    augment: Augmentations = field(default_factory=Augmentations)
    alpha: tuple[float, float] = (0.0, 1.0)  # used only by wide lines (dB >= 1000 G)
    log_dB: bool = False  # draw dB log-uniformly (ranges spanning a decade or more)
    # with log_dB, (width G, share): draw `share` of the lines log-uniformly below `width`
    # and the rest log-uniformly above it (None: one log-uniform range). A window-agnostic
    # model reads a line narrower than infer.ZOOM_BELOW of its sweep again on a window
    # zoomed to it, so it reads narrow lines at 10-30 % of a window: its budget is better
    # spent above that width, with a share below it for the first, zooming reading.
    dB_narrow: tuple[float, float] | None = None
    # the window is nominal: the model reads a spectrum recorded over any sweep by
    # mapping that sweep onto this window (targets relative to the sweep); see infer
    relative_window: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "B0", _range("B0", self.B0, lower=0.0))
        object.__setattr__(self, "dB", _range("dB", self.dB, lower=0.0))
        object.__setattr__(self, "p", _range("p", self.p, lower=0.0))
        a_lo, a_hi = (float(v) for v in self.alpha)
        if a_lo < 0 or a_lo > a_hi:
            raise ConfigError(f"{_OPT}alpha: need 0 <= min <= max (got [{a_lo}, {a_hi}])")
        object.__setattr__(self, "alpha", (a_lo, a_hi))
        try:
            w_lo, w_hi = (float(v) for v in self.window)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{_OPT}window: expected [Bmin, Bmax] in G (got {self.window!r})"
            ) from None
        if not (math.isfinite(w_lo) and math.isfinite(w_hi) and w_lo < w_hi):
            raise ConfigError(f"{_OPT}window: need finite Bmin < Bmax (got [{w_lo}, {w_hi}])")
        object.__setattr__(self, "window", (w_lo, w_hi))
        if not (self.B0[0] >= w_lo and self.B0[1] <= w_hi):
            raise ConfigError(
                f"{_OPT}B0: range [{self.B0[0]}, {self.B0[1]}] G must lie inside the window [{w_lo}, {w_hi}] G"
            )
        if isinstance(self.n_points, bool) or int(self.n_points) != self.n_points:
            raise ConfigError(f"{_OPT}n_points: must be an integer (got {self.n_points!r})")
        if self.n_points < MIN_POINTS:
            raise ConfigError(f"{_OPT}n_points: must be >= {MIN_POINTS} (got {self.n_points})")
        object.__setattr__(self, "n_points", int(self.n_points))
        if self.geometry not in GEOMETRIES:
            allowed = ", ".join(repr(g) for g in GEOMETRIES)
            raise ConfigError(f"{_OPT}geometry: must be one of {allowed} (got {self.geometry!r})")
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", Augmentations(**self.augment))
        lo, hi = self.dB
        if self.dB_narrow is not None:
            try:
                width, share = (float(v) for v in self.dB_narrow)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{_OPT}dB_narrow: expected [width G, share] or null (got {self.dB_narrow!r})"
                ) from None
            if not self.log_dB:
                raise ConfigError(f"{_OPT}dB_narrow: needs log_dB: true (a log-uniform dB)")
            if not (lo < width < hi and 0.0 < share < 1.0):
                raise ConfigError(
                    f"{_OPT}dB_narrow: need dB min < width < dB max and 0 < share < 1 "
                    f"(got [{width}, {share}] with dB [{lo}, {hi}])"
                )
            object.__setattr__(self, "dB_narrow", (width, share))
        if lo < WIDE_LINE_THRESHOLD_G <= hi and hi != lo:
            raise ConfigError(
                f"{_OPT}dB: range [{lo}, {hi}] G straddles the narrow/wide threshold "
                f"{WIDE_LINE_THRESHOLD_G:g} G; use two models, one below and one at or above it"
            )

    @property
    def wide(self) -> bool:
        """Wide lines (dB >= 1000 G) use the Joshi model: targets are B0, dB, alpha."""
        return self.dB[0] >= WIDE_LINE_THRESHOLD_G

    @property
    def target_names(self) -> tuple[str, str, str]:
        return ("B0", "dB", "alpha") if self.wide else ("B0", "dB", "p")

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {name: getattr(self, name) for name in self.target_names}

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples): the cache key, hparams and checkpoints use it.

        Without `dB_narrow` the key is left out, so that a config without it has the same
        dict (cache key, checkpoint hparams, exported models) as before the option."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        if d["dB_narrow"] is None:
            del d["dB_narrow"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SimulationConfig:
        d = dict(d)
        aug = d.pop("augment", {})
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(aug).items()}
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d, augment=Augmentations(**aug))

    def replace(self, **changes) -> SimulationConfig:
        return dataclasses.replace(self, **changes)


def field_axis(cfg: SimulationConfig) -> np.ndarray:
    """The model's field axis: `n_points` evenly spaced over `window` (G), float64."""
    return np.linspace(cfg.window[0], cfg.window[1], cfg.n_points)


_SETS_WINDOW_A = (3256.0, 3455.9)
_SETS_WINDOW_B = (3257.85, 3457.75)

#: The prior work's parameter ranges and windows (physics.md), 4096 points, field
#: scale and offset augmentations off as there.
PRESETS: dict[str, SimulationConfig] = {
    "set-1": SimulationConfig(B0=(3280, 3430), dB=(10, 50), p=(0.5, 2.0), window=(3257.85, 3455.9)),
    "set-2": SimulationConfig(B0=(3300, 4100), dB=(200, 900), p=(0.5, 2.5), window=(0.0, 6998.29)),
    "set-3": SimulationConfig(B0=(3300, 3400), dB=(3, 70), p=(0.2, 2.0), window=_SETS_WINDOW_A),
    "set-4": SimulationConfig(B0=(3300, 3400), dB=(3, 100), p=(0.2, 2.0), window=_SETS_WINDOW_A),
    "set-5": SimulationConfig(B0=(3300, 3400), dB=(3, 50), p=(0.2, 2.0), window=_SETS_WINDOW_B),
    "set-6": SimulationConfig(
        B0=(3345, 3360), dB=(3, 12), p=(1.0, 4.5), window=(3326.0, 3376.0), geometry="sphere"
    ),
    "prior-default": SimulationConfig(
        B0=(3400, 4500), dB=(250, 350), p=(1.3, 1.5), window=(0.0, 5000.0)
    ),
}
# One model for any sweep (targets relative to the window, which is nominal: 0-1000
# "G" = the recorded sweep). Ranges cover all six prior-work sets: B0 at 10-90 % of
# the sweep, dB 1-50 % of it (log-uniform), p up to the fold of A/D (plate 2.654,
# sphere 4.508; `lineshapes.p_fold`) where every shape belongs to one p: beyond it
# lines repeat shapes of smaller p, and `infer` names that twin (`lineshapes.p_twin`).
PRESETS["universal-plate"] = SimulationConfig(
    B0=(100, 900), dB=(10, 500), p=(0.05, 2.65), window=(0.0, 1000.0),
    log_dB=True, relative_window=True,
)  # fmt: skip
PRESETS["universal-sphere"] = SimulationConfig(
    B0=(100, 900), dB=(10, 500), p=(0.2, 4.5), window=(0.0, 1000.0), geometry="sphere",
    log_dB=True, relative_window=True,
)  # fmt: skip
PRESETS["default"] = PRESETS["set-4"]


def preset(name: str) -> SimulationConfig:
    try:
        return PRESETS[name]
    except KeyError:
        allowed = ", ".join(sorted(PRESETS))
        raise ConfigError(f"preset: unknown name {name!r} (allowed: {allowed})") from None
