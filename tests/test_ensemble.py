"""Ensembles of window-agnostic models (`dysonian_pl.ensemble`): the mixture, the manifest,
its checks, calibration and `infer` reading one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny_checkpoint

from dysonian_pl import ensemble, infer, npnet
from dysonian_pl.ensemble import Ensemble, EnsembleError, load_ensemble, mixture
from dysonian_pl.lineshapes import dysonian
from dysonian_pl.simulate import simulate


def test_mixture_of_gaussians_matches_its_definition_and_sampling() -> None:
    values = np.array([[[1.0, 10.0]], [[3.0, 10.0]]])  # 2 members, 1 spectrum, 2 targets
    sigmas = np.array([[[1.0, 2.0]], [[1.0, 4.0]]])
    mean, sigma = mixture(values, sigmas)
    np.testing.assert_allclose(mean, [[2.0, 10.0]])
    # variance = mean member variance + spread of the means: (1 + 1) / 2 + 1; (4 + 16) / 2
    np.testing.assert_allclose(sigma, [[np.sqrt(2.0), np.sqrt(10.0)]])
    rng = np.random.default_rng(0)
    pick = rng.integers(0, 2, 400_000)
    draws = rng.normal(values[pick, 0, 0], sigmas[pick, 0, 0])
    assert draws.mean() == pytest.approx(2.0, abs=0.01)
    assert draws.std() == pytest.approx(np.sqrt(2.0), rel=0.01)
    # identical members: the ensemble is the member
    m, s = mixture(np.repeat(values[:1], 3, axis=0), np.repeat(sigmas[:1], 3, axis=0))
    np.testing.assert_array_equal(m, values[0])
    np.testing.assert_allclose(s, sigmas[0], rtol=1e-15)


@pytest.fixture(scope="module")
def members(rel_ckpt: Path, tmp_path_factory) -> list[Path]:
    """Two tiny window-agnostic checkpoints with their .npz exports, in one folder."""
    folder = tmp_path_factory.mktemp("members")
    a = folder / "a.ckpt"
    shutil.copy(rel_ckpt, a)
    torch.manual_seed(11)
    b = train_tiny_checkpoint(
        infer.load_model(rel_ckpt).sim, folder / "b.ckpt", seed=1, uncertainty=True
    )
    for c in (a, b):
        npnet.export_npz(c, c.with_suffix(".npz"))
    return [a, b]


@pytest.fixture()
def manifest(members: list[Path], tmp_path: Path) -> Path:
    folder = tmp_path / "ens"
    folder.mkdir()
    for c in members:
        shutil.copy(c, folder / c.name)
        shutil.copy(c.with_suffix(".npz"), folder / c.with_suffix(".npz").name)
    out = folder / "m.ensemble.json"
    rc = ensemble.main([str(folder / c.name) for c in members] + ["--out", str(out), "--note", "x"])
    assert rc == 0
    return out


def _spectra(model, n: int = 24) -> np.ndarray:
    return simulate(model.sim, 0, 10**9 + np.arange(n))[0].numpy()


def test_an_ensemble_predicts_the_mixture_of_its_members(manifest: Path) -> None:
    ens = infer.load_model(manifest)
    assert isinstance(ens, Ensemble) and ens.engine == "numpy" and len(ens.members) == 2
    assert ens.checkpoint_meta["note"] == "x"
    assert [m["ckpt"] for m in ens.checkpoint_meta["members"]] == ["a.ckpt", "b.ckpt"]
    x = _spectra(ens)
    value, sigma = infer.predict_arrays(ens, x, return_sigma=True)
    parts = [infer.predict_arrays(m, x, return_sigma=True) for m in ens.members]
    mean = (parts[0][0] + parts[1][0]) / 2
    var = (parts[0][1] ** 2 + parts[0][0] ** 2 + parts[1][1] ** 2 + parts[1][0] ** 2) / 2 - mean**2
    np.testing.assert_allclose(value, mean, rtol=1e-12)
    np.testing.assert_allclose(sigma, np.sqrt(var), rtol=1e-6)
    assert (sigma >= np.minimum(parts[0][1], parts[1][1])).all()
    assert not np.allclose(parts[0][0], parts[1][0])  # two different members
    # the torch members give the same numbers (npnet.TOLERANCE of each target's span)
    torch_ens = load_ensemble(manifest, engine="torch")
    assert torch_ens.engine == "torch"
    v2, s2 = infer.predict_arrays(torch_ens, x, return_sigma=True)
    span = np.array([hi - lo for lo, hi in ens.sim.ranges().values()])
    assert (np.abs(v2 - value) / span).max() < npnet.TOLERANCE
    np.testing.assert_allclose(s2, sigma, rtol=npnet.TOLERANCE)


def test_manifest_errors_name_the_file_and_what_is_wrong(manifest: Path, members, capsys) -> None:
    doc = json.loads(manifest.read_text())
    bad = manifest.with_name("bad.ensemble.json")
    bad.write_text(json.dumps({**doc, "format": "something-else"}))
    with pytest.raises(EnsembleError, match=r"bad\.ensemble\.json: 'format' must be"):
        load_ensemble(bad)
    bad.write_text(json.dumps({**doc, "members": doc["members"][:1]}))
    with pytest.raises(EnsembleError, match="at least two entries"):
        load_ensemble(bad)
    bad.write_text("{not json")
    with pytest.raises(EnsembleError, match="not a readable JSON manifest"):
        load_ensemble(bad)
    with pytest.raises(EnsembleError, match="no such file"):
        load_ensemble(manifest.with_name("missing.ensemble.json"))
    # a member replaced after the ensemble was made: its .npz no longer matches the
    # listed sha256 (read with torch instead, said), and its .ckpt is refused
    folder = manifest.parent
    shutil.copy(folder / "a.ckpt", folder / "b.ckpt")
    shutil.copy(folder / "a.npz", folder / "b.npz")
    said: list[str] = []
    with pytest.raises(EnsembleError, match=r"member 2 b\.ckpt is not the checkpoint .*sha256"):
        load_ensemble(manifest, say=said.append)
    assert "b.npz was not made from the listed b.ckpt" in said[0]
    # a stale .npz beside the right .ckpt: torch for that member, with a warning
    shutil.copy(members[1], folder / "b.ckpt")
    said.clear()
    ens = load_ensemble(manifest, say=said.append)
    assert ens.engine == "numpy+torch" and len(said) == 1
    (folder / "b.ckpt").unlink()
    with pytest.raises(EnsembleError, match=r"member 2 .*b\.ckpt: no such file"):
        load_ensemble(manifest, say=said.append)
    # the command line: an error in one line, exit 2, no manifest written
    out = folder / "new.ensemble.json"
    assert ensemble.main([str(folder / "a.ckpt"), "--out", str(out)]) == 2
    assert "at least two members" in capsys.readouterr().err
    assert ensemble.main([str(folder / "a.ckpt"), str(folder / "b.ckpt"), "--out", str(out)]) == 2
    assert "b.ckpt: expected an existing .ckpt file" in capsys.readouterr().err
    assert not out.exists()


def test_members_must_read_the_same_spectra_and_predict_sigmas(members, tiny_run) -> None:
    a = infer.load_model(members[0])
    fixed = infer.load_model(tiny_run.best)  # a fixed-window model without uncertainty
    with pytest.raises(ValueError, match="member 2 was trained for other spectra"):
        Ensemble([a, fixed])
    with pytest.raises(ValueError, match="at least two members"):
        Ensemble([a])
    with pytest.raises(EnsembleError, match="member 2 was trained for other spectra"):
        ensemble.write_manifest(
            members[0].with_name("x.ensemble.json"), [members[0], tiny_run.best]
        )
    assert not members[0].with_name("x.ensemble.json").exists()


def test_calibrating_an_ensemble_writes_its_manifest_and_infer_uses_it(
    manifest: Path, tmp_path: Path, capsys
) -> None:
    from dysonian_pl.calibration import apply_bias, apply_calibration, main

    out = manifest.with_name("cal.ensemble.json")
    assert main(["--ckpt", str(manifest), "--out", str(out), "--n", "1000", "--seed", "3"]) == 0
    assert "| after |" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    table = doc["sigma_calibration"]
    assert table["fitted_on"]["n"] == 1000 and doc["note"] == "x"
    assert [m["ckpt"] for m in doc["members"]] == ["a.ckpt", "b.ckpt"]
    ens, cal = infer.load_model(manifest), infer.load_model(out)
    x = _spectra(ens, 16)
    axis = np.linspace(*ens.sim.window, ens.sim.n_points)
    v0, s0, w0 = infer.predict_zoomed(ens, axis, x)
    v1, s1, w1 = infer.predict_zoomed(cal, axis, x)
    zoomed = w1[..., 1] - w1[..., 0] < 0.999 * (axis[-1] - axis[0])  # (N, 3)
    np.testing.assert_allclose(v1, apply_bias(table, v0, w1, zoomed), rtol=1e-12)
    np.testing.assert_allclose(s1, apply_calibration(table, v1, s0, w1, zoomed), rtol=1e-12)
    assert not np.allclose(s0, s1)
    # a manifest written elsewhere still finds the members
    far = tmp_path / "elsewhere" / "far.ensemble.json"
    assert main(["--ckpt", str(out), "--out", str(far), "--n", "1000"]) == 0
    assert len(load_ensemble(far).members) == 2
    # --ckpt and --out of two kinds: refused, nothing written
    assert main(["--ckpt", str(manifest), "--out", str(tmp_path / "c.ckpt"), "--n", "1000"]) == 2
    assert "of one kind" in capsys.readouterr().err
    assert not (tmp_path / "c.ckpt").exists()


def test_infer_reads_files_with_an_ensemble_and_says_so(manifest: Path, tmp_path: Path) -> None:
    field = np.linspace(3300.0, 3500.0, 1024)
    line = dysonian(field, 3402.0, 40.0, 0.8, "plate")
    f = tmp_path / "line.csv"
    f.write_text(
        "Field [G],Intensity\n"
        + "\n".join(f"{b:.4f},{s:.8e}" for b, s in zip(field, line, strict=True))
    )
    (row,) = infer.infer_files([f], infer.load_model(manifest), tmp_path / "out", plots=False)
    assert row["status"] != "error" and all(
        np.isfinite(row[f"{k}_sigma"]) for k in ("B0", "dB", "p")
    )
    doc = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert doc["model"]["engine"] == "numpy"
    assert doc["model"]["checkpoint"] == str(manifest.resolve())
    assert [m["ckpt"] for m in doc["model"]["ensemble_members"]] == ["a.ckpt", "b.ckpt"]


def test_a_shipped_manifest_is_what_infer_uses_without_ckpt(manifest, tmp_path, monkeypatch):
    shipped = tmp_path / "pretrained"
    shutil.copytree(manifest.parent, shipped)
    (shipped / manifest.name).rename(shipped / "universal-plate.ensemble.json")
    monkeypatch.setattr(infer, "_pretrained_dir", lambda: shipped)
    assert infer.default_ensemble("plate") == str(shipped / "universal-plate.ensemble.json")
    assert infer.default_ensemble("sphere") is None
    model = infer.load_pretrained("plate")
    assert isinstance(model, Ensemble) and model.engine == "numpy"
