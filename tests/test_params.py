"""The parameter table, the presets and the one-line configuration errors."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import CONFIG_DIR

from dysonian_pl.params import (
    MIN_POINTS,
    PARAMETERS,
    PRESETS,
    WIDE_LINE_THRESHOLD_G,
    Augmentations,
    ConfigError,
    SimulationConfig,
    preset,
    unit_label,
)

SET_FILES = sorted((CONFIG_DIR / "sets").glob("*.yaml"))

# physics.md, "Parameter ranges per data set in the prior work" (and its generic default)
PHYSICS_TABLE = {
    "set-1": ((3280, 3430), (10, 50), (0.5, 2.0), (3257.85, 3455.90), "plate"),
    "set-2": ((3300, 4100), (200, 900), (0.5, 2.5), (0, 6998.29), "plate"),
    "set-3": ((3300, 3400), (3, 70), (0.2, 2.0), (3256, 3455.90), "plate"),
    "set-4": ((3300, 3400), (3, 100), (0.2, 2.0), (3256, 3455.90), "plate"),
    "set-5": ((3300, 3400), (3, 50), (0.2, 2.0), (3257.85, 3457.75), "plate"),
    "set-6": ((3345, 3360), (3, 12), (1.0, 4.5), (3326, 3376), "sphere"),
    "prior-default": ((3400, 4500), (250, 350), (1.3, 1.5), (0, 5000), "plate"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_is_narrow(name: str) -> None:
    cfg = preset(name)
    assert cfg is PRESETS[name]
    assert cfg.n_points == 4096
    assert cfg.target_names == ("B0", "dB", "p")
    assert not cfg.wide
    # a frozen dataclass rebuilt from its dict is the same config
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    # the prior work ran all its sets with field scale and offset augmentations off
    assert cfg.augment.field_scale == (1.0, 1.0)
    assert cfg.augment.field_offset_g == 0.0


@pytest.mark.parametrize("name", sorted(PHYSICS_TABLE))
def test_presets_match_physics_table(name: str) -> None:
    B0, dB, p, window, geometry = PHYSICS_TABLE[name]
    cfg = PRESETS[name]
    assert cfg.B0 == pytest.approx(B0, abs=1e-9)
    assert cfg.dB == pytest.approx(dB, abs=1e-9)
    assert cfg.p == pytest.approx(p, abs=1e-9)
    assert cfg.window == pytest.approx(window, abs=1e-9)
    assert cfg.geometry == geometry


def test_default_is_set_4_and_the_dataclass_default() -> None:
    assert PRESETS["default"] == PRESETS["set-4"]
    assert SimulationConfig() == PRESETS["set-4"]


def test_set_files_cover_the_presets() -> None:
    stems = {f.stem for f in SET_FILES}
    assert stems == set(PRESETS) - {"default"}


@pytest.mark.parametrize("path", SET_FILES, ids=lambda p: p.stem)
def test_set_yaml_equals_preset(path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert set(doc) == {"data"} and set(doc["data"]) == {"sim"}
    sim = doc["data"]["sim"]
    cfg = SimulationConfig.from_dict(sim)
    assert cfg == PRESETS[path.stem]
    # and field by field, so a mismatch names the field
    for key, value in sim.items():
        expected = getattr(PRESETS[path.stem], key)
        if isinstance(value, list):
            assert tuple(float(v) for v in value) == pytest.approx(expected, abs=1e-9), key
        else:
            assert value == expected, key


def test_parameter_table_units_and_labels() -> None:
    assert [PARAMETERS[n].unit for n in ("B0", "dB", "p")] == ["G", "G", ""]
    assert unit_label("B0") == "B0 (G)"
    assert unit_label("dB") == "dB (G)"
    assert unit_label("p") == "p"
    assert all(PARAMETERS[n].lower == 0.0 for n in PARAMETERS)


def _starts_with_option(msg: str, option: str) -> bool:
    """The message opens with the option's name (bare or as the YAML path data.sim.NAME)."""
    return re.match(rf"^(data\.sim\.)?{re.escape(option)}:", msg) is not None


def _error(**changes) -> str:
    with pytest.raises(ConfigError) as info:
        SimulationConfig(**changes)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work
    msg = str(info.value)
    assert "\n" not in msg  # one line
    return msg


def test_error_min_greater_than_max() -> None:
    msg = _error(B0=(3400.0, 3300.0))
    assert _starts_with_option(msg, "B0")
    assert "3400" in msg and "3300" in msg
    assert "min must be <= max" in msg


def test_error_p_not_positive() -> None:
    msg = _error(p=(0.0, 1.0))
    assert _starts_with_option(msg, "p") and "> 0" in msg and "0.0" in msg
    msg = _error(p=(-0.5, 1.0))
    assert _starts_with_option(msg, "p") and "-0.5" in msg


def test_error_dB_not_positive() -> None:
    msg = _error(dB=(0.0, 10.0))
    assert _starts_with_option(msg, "dB") and "> 0" in msg and "0.0" in msg
    msg = _error(dB=(-3.0, 10.0))
    assert _starts_with_option(msg, "dB") and "-3.0" in msg


@pytest.mark.parametrize("dB", [(500.0, 1500.0), (999.0, 1000.0)])
def test_error_dB_straddles_wide_threshold(dB) -> None:
    msg = _error(dB=dB, B0=(4000.0, 5000.0), window=(0.0, 10000.0))
    assert _starts_with_option(msg, "dB")
    assert f"{dB[0]}" in msg and f"{dB[1]}" in msg
    assert "straddles" in msg and f"{WIDE_LINE_THRESHOLD_G:g}" in msg


@pytest.mark.parametrize(
    ("dB", "wide"), [((999.0, 999.0), False), ((1000.0, 1000.0), True), ((1000.0, 3000.0), True)]
)
def test_dB_on_one_side_of_threshold_is_allowed(dB, wide: bool) -> None:
    cfg = SimulationConfig(dB=dB, B0=(4000.0, 5000.0), window=(0.0, 10000.0))
    assert cfg.wide is wide
    assert cfg.target_names == (("B0", "dB", "alpha") if wide else ("B0", "dB", "p"))
    assert set(cfg.ranges()) == set(cfg.target_names)


@pytest.mark.parametrize(
    ("narrow", "log_dB", "what"),
    [
        ((40.0, 0.1), False, "needs log_dB"),
        ((5.0, 0.1), True, "dB min < width < dB max"),
        ((100.0, 0.1), True, "dB min < width < dB max"),
        ((40.0, 0.0), True, "0 < share < 1"),
        ((40.0, 1.0), True, "0 < share < 1"),
        ((40.0,), True, "expected [width G, share]"),
        ("wide", True, "expected [width G, share]"),
    ],
)
def test_error_dB_narrow(narrow, log_dB: bool, what: str) -> None:
    msg = _error(dB=(10.0, 100.0), log_dB=log_dB, dB_narrow=narrow)
    assert _starts_with_option(msg, "dB_narrow") and what in msg


def test_dB_narrow_round_trips_and_defaults_to_none() -> None:
    assert SimulationConfig().dB_narrow is None
    cfg = SimulationConfig(dB=(10.0, 100.0), log_dB=True, dB_narrow=[20, 0.25])
    assert cfg.dB_narrow == (20.0, 0.25)
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    # without it, the dict (cache key, checkpoint hparams) is the one from before the option
    plain = cfg.replace(dB_narrow=None).to_dict()
    assert "dB_narrow" not in plain and cfg.to_dict()["dB_narrow"] == [20.0, 0.25]
    assert SimulationConfig.from_dict(plain).dB_narrow is None


def test_error_n_points_too_small() -> None:
    msg = _error(n_points=MIN_POINTS - 1)
    assert _starts_with_option(msg, "n_points") and f">= {MIN_POINTS}" in msg and "127" in msg
    assert SimulationConfig(n_points=MIN_POINTS).n_points == MIN_POINTS
    msg = _error(n_points=256.5)
    assert _starts_with_option(msg, "n_points") and "integer" in msg and "256.5" in msg


def test_error_window_does_not_contain_B0_range() -> None:
    msg = _error(B0=(3300.0, 3400.0), window=(3350.0, 3455.9))
    assert _starts_with_option(msg, "B0") and "window" in msg
    assert "3300.0" in msg and "3350.0" in msg
    msg = _error(window=(3455.9, 3256.0))
    assert _starts_with_option(msg, "window") and "Bmin < Bmax" in msg


def test_error_unknown_geometry() -> None:
    msg = _error(geometry="cylinder")
    assert _starts_with_option(msg, "geometry")
    assert "'cylinder'" in msg and "'plate'" in msg and "'sphere'" in msg


def test_error_unknown_preset() -> None:
    with pytest.raises(ConfigError) as info:
        preset("set-9")
    msg = str(info.value)
    assert _starts_with_option(msg, "preset") and "'set-9'" in msg
    for name in PRESETS:
        assert name in msg


def test_error_augmentation_values() -> None:
    with pytest.raises(ConfigError, match=r"augment\.smooth_prob: probability must be in \[0, 1\]"):
        Augmentations(smooth_prob=1.5)
    with pytest.raises(ConfigError, match=r"augment\.snr_db: min must be <= max \(got \[60"):
        Augmentations(snr_db=(60.0, 40.0))
    with pytest.raises(ConfigError, match=r"augment\.baseline_slope: amplitude must be >= 0"):
        Augmentations(baseline_slope=-0.1)
