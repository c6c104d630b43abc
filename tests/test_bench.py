"""`python -m dysonian_pl bench`: pure helpers, argument errors, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from dysonian_pl import bench


def test_round_order_alternates():
    names = ["baseline", "optimized"]
    assert bench.round_order(names, 0) == ["baseline", "optimized"]
    assert bench.round_order(names, 1) == ["optimized", "baseline"]
    assert bench.round_order(names, 2) == ["baseline", "optimized"]
    assert bench.round_order(["a", "b", "c"], 3) == ["c", "b", "a"]
    # over an even number of rounds every regime goes first equally often
    firsts = [bench.round_order(names, r)[0] for r in range(6)]
    assert firsts.count("baseline") == firsts.count("optimized") == 3


def test_plan_rounds_splits_the_budget():
    assert bench.plan_rounds(10, 2, 20) == (15, 20.0)
    rounds, secs = bench.plan_rounds(0.1, 2, 1.0)
    assert rounds == 3 and secs == pytest.approx(1.0)
    assert bench.plan_rounds(0.01, 2, 20) == (1, pytest.approx(0.3))  # never zero rounds


def test_time_to_target():
    target = (0.5, 0.7, 0.02)
    curve = [
        (10.0, (2.0, 2.0, 0.1)),
        (20.0, (0.4, 0.9, 0.01)),  # dB not there yet
        (30.0, (0.5, 0.7, 0.02)),  # all equal to the target counts
        (40.0, (0.1, 0.1, 0.001)),
    ]
    assert bench.time_to_target(curve, target) == 30.0
    assert bench.time_to_target(curve[:3], (1e-9, 1e-9, 1e-9)) is None
    assert bench.time_to_target([], target) is None
    assert bench.time_to_target(curve, (5, 5, 5)) == 10.0
    with pytest.raises(ValueError):
        bench.time_to_target([(1.0, (1.0, 1.0))], target)


def test_targets_and_sets_parse():
    assert bench.parse_target("0.56,0.77,0.022") == (0.56, 0.77, 0.022)
    assert bench.parse_target2("2x", (1.0, 2.0, 0.5)) == (2.0, 4.0, 1.0)
    assert bench.parse_target2("1,2,3", (9, 9, 9)) == (1.0, 2.0, 3.0)
    assert bench.parse_set("model.arch=prior") == "--model.arch=prior"
    assert bench.parse_set("data.sim.window=[1,2]") == "--data.sim.window=[1,2]"
    for bad in ("1,2", "a,b,c", "1,-1,1", "1,nan,1"):
        with pytest.raises(bench.BenchError):
            bench.parse_target(bad)
    for bad in ("nox", "0x", "-1x"):
        with pytest.raises(bench.BenchError):
            bench.parse_target2(bad, (1, 1, 1))
    for bad in ("model.width", "=3", "model..width=3", "--model.width=3"):
        with pytest.raises(bench.BenchError):
            bench.parse_set(bad)


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "model.width"],
        ["nope=configs/does-not-exist.yaml"],
        ["--target", "1,2"],
        ["--target2", "abc"],
        ["--minutes", "0"],
        ["a=configs/baseline.yaml", "a=configs/baseline.yaml"],
        ["--no-such-flag"],
        ["--set", "model.width=abc"],  # rejected by the CLI parser
        ["--set", "trainer.max_epochs=-5"],  # rejected by Lightning
    ],
)
def test_user_errors_are_one_line_and_status_2(args, capsys, tmp_path):
    assert bench.main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dysonian_pl bench: ") and "\n" not in err
    assert not (tmp_path / "bench.json").exists()


def test_bench_end_to_end(tmp_path, monkeypatch, capsys):
    from dysonian_pl.module import DysonianRegressor
    from dysonian_pl.params import SimulationConfig

    monkeypatch.chdir(tmp_path)  # regime paths fall back to the repository
    common = [
        "--set", "data.sim.n_points=256", "--set", "model.width=8",
        "--set", "data.num_workers=0", "--set", "data.n_spectra=300",
        "--set", "data.cache_dir=null",
    ]  # fmt: skip
    # a checkpoint for the same simulation (as the DysonianRegressor hyper-parameters say)
    sim = SimulationConfig(n_points=256)
    ck_model = DysonianRegressor(sim=sim, width=8)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(
        {"hyper_parameters": dict(ck_model.hparams), "state_dict": ck_model.state_dict()}, ckpt
    )
    out = tmp_path / "out"
    rc = bench.main(
        [
            "baseline=configs/baseline.yaml",
            "optimized=configs/optimized.yaml",
            *common,
            "--n-val", "64", "--round-seconds", "1", "--minutes", "0.1",
            "--infer-n", "256", "--infer-batch", "128", "--latency-calls", "20",
            "--threads", "1", "--ckpt", str(ckpt), "--simulator", "--sim-n", "256",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    assert "| regime | batch | workers | precision |" in md
    assert "| regime | batch | workers | precision |" in stdout

    assert list(report["regimes"]) == ["baseline", "optimized"]
    assert report["settings"]["rounds"] == 3
    for name, r in report["regimes"].items():
        t = r["train"]
        assert t["samples_per_s"] > 0 and t["samples_per_s_median_round"] > 0
        assert 0.0 <= t["data_wait_fraction"] <= 1.0
        assert t["step_ms"] > 0
        assert set(t["final_mae"]) == {"B0", "dB", "p"}
        assert all(v > 0 for v in t["final_mae"].values())
        assert t["time_to_target_s"] is None or t["time_to_target_s"] > 0
        assert len(r["rounds"]) == 3
        cum = [x["train_seconds_cum"] for x in r["rounds"]]
        assert cum == sorted(cum) and cum[0] > 0
        # interleaving: baseline first in rounds 0 and 2, second in round 1
        first = [x["order"] == 0 for x in r["rounds"]]
        assert first == ([True, False, True] if name == "baseline" else [False, True, False])
        inf = r["inference"]
        assert inf["eager"]["batched_spectra_per_s"] > 0 and inf["eager"]["latency_ms"] > 0
        assert isinstance(inf["traced"], dict), inf["traced"]
        assert inf["traced"]["batched_spectra_per_s"] > 0 and inf["traced"]["latency_ms"] > 0
        assert r["config"]["num_workers"] == 0
    base, opt = report["regimes"]["baseline"]["config"], report["regimes"]["optimized"]["config"]
    assert (base["batch_size"], opt["batch_size"]) == (16, 32)
    assert base["optimizer"].endswith("Adam") and opt["optimizer"].endswith("AdamW")
    assert (base["lr"], opt["lr"]) == (0.001, 0.002)
    assert (base["dropout"], opt["dropout"]) == (0.2, 0.1)
    assert base["ema"] is None and opt["ema"] is None  # the seed's regimes: no weight average
    assert opt["benchmark"] is True and base["benchmark"] is False
    if not torch.cuda.is_available():
        assert opt["precision_requested"] == "16-mixed"
        assert opt["precision"] == "32-true"
        assert report["device"] == "cpu"
        assert report["regimes"]["optimized"]["train"]["peak_rss_mb"] > 0
    assert report["checkpoint"]["inference"]["eager"]["batched_spectra_per_s"] > 0
    assert set(report["checkpoint"]["mae"]) == {"B0", "dB", "p"}
    assert report["simulator"]["spectra_per_s"] > 0
    for key in ("python", "torch", "lightning", "torchmetrics", "numpy", "dysonian_pl"):
        assert report["versions"][key]
    assert report["machine"]["cpu_count"] >= 1
    assert report["command"].startswith("python -m dysonian_pl bench baseline=")
    assert torch.get_num_threads() >= 1


def test_default_regime_trains_and_evaluates_its_weight_average(tmp_path, monkeypatch):
    """The default config's `ema`: updated every step from `start_step`, inside the timed
    step, and what evaluation and inference read, as `fit` leaves it."""
    monkeypatch.chdir(tmp_path)
    tiny = [
        "--data.sim.n_points=256", "--model.width=8", "--data.num_workers=0",
        "--data.n_spectra=300", "--data.cache_dir=null", "--data.batch_size=16",
    ]  # fmt: skip
    reg = bench.build_regime("default", [], [*tiny, "--ema.start_step=2", "--ema.decay=0.5"])
    assert reg.config["ema"] == {"decay": 0.5, "start_step": 2}
    assert reg.trained() is reg.model  # no update yet: the weights as trained
    res = bench.train_round(reg, 0.5)
    assert res["steps"] == reg.steps_done >= 3
    assert int(reg.ema.n_averaged) == reg.steps_done - 2
    assert reg.trained() is reg.ema.module
    avg = dict(reg.trained().named_parameters())
    cur = dict(reg.model.named_parameters())
    assert any(not torch.equal(avg[k], cur[k]) for k in cur)
    off = bench.build_regime("off", [], [*tiny, "--ema.enabled=false"])
    assert off.ema is None and off.config["ema"] is None
    bench.train_round(off, 0.2)
    assert off.trained() is off.model
