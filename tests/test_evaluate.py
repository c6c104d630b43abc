"""`python -m dysonian_pl sets`: a checkpoint on every prior-work set."""

from __future__ import annotations

import json
from pathlib import Path

from dysonian_pl.evaluate import PUBLISHED_MAE, main


def test_sets_table_coverage_and_reliability(rel_ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "--ckpt",
            str(rel_ckpt),
            "--sets",
            "set-4",
            "set-2",
            "set-6",
            "--n",
            "40",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "| set-4 | 40 |" in table and "0.56, 0.77, 0.022" in table
    assert "skipped: geometry sphere (model: plate)" in table
    res = json.loads((out / "sets.json").read_text())["results"]
    for name in ("set-4", "set-2"):
        r = res[name]
        assert len(r["mae"]) == 3 and all(v > 0 for v in r["mae"])
        # coverage fractions are fractions of 40 spectra, and 2 sigma covers at least 1 sigma
        for c1, c2 in zip(r["cover1"], r["cover2"], strict=True):
            assert 0 <= c1 <= c2 <= 1 and abs(c1 * 40 - round(c1 * 40)) < 1e-9
        assert len(r["reliability"]) == 3 and len(r["reliability"][0]) == 19
    # B0 errors are in gauss of each set's own window: set-2's window is 35x wider
    assert res["set-2"]["mae"][0] > 5 * res["set-4"]["mae"][0]
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(PUBLISHED_MAE) == {"set-1", "set-3", "set-4", "set-5"}


def test_unknown_set_is_one_line_error(rel_ckpt: Path, tmp_path: Path, capsys) -> None:
    assert main(["--ckpt", str(rel_ckpt), "--sets", "set-9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --sets: unknown set 'set-9'") and "\n" not in err


def test_reference_models_add_their_mae_and_the_ratio(rel_ckpt: Path, tmp_path: Path, capsys):
    from conftest import train_tiny_checkpoint

    from dysonian_pl.params import PRESETS

    per_set = train_tiny_checkpoint(PRESETS["set-4"].replace(n_points=256), tmp_path / "set4.ckpt")
    # a fixed-window model reads its own window only: the reference's points must match
    args = ["--ckpt", str(rel_ckpt), "--sets", "set-4", "--n", "30", "--out", str(tmp_path)]
    assert main([*args, "--reference", f"set-4={per_set}"]) == 2
    assert "cannot read another window" in capsys.readouterr().err

    per_set = train_tiny_checkpoint(PRESETS["set-4"], tmp_path / "set4-4096.ckpt")
    assert main([*args, "--reference", f"set-4={per_set}"]) == 0
    table = capsys.readouterr().out
    assert "ratio to it (B0, dB, p)" in table
    r = json.loads((tmp_path / "sets.json").read_text())["results"]["set-4"]
    assert len(r["reference"]["mae"]) == 3
    for a, b, q in zip(r["mae"], r["reference"]["mae"], r["ratio"], strict=True):
        assert q == a / b

    assert main([*args, "--reference", "set-9=x.ckpt"]) == 2
    assert "expected SET=CKPT" in capsys.readouterr().err
