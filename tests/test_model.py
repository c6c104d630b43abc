"""The network (plain nn.Module), its input channels and the target scaling of the module."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from dysonian_pl.model import DysonNet, count_parameters, fuse_for_inference, input_channels
from dysonian_pl.module import DysonianRegressor, TargetScaler
from dysonian_pl.params import ConfigError, SimulationConfig


def test_prior_network_has_the_prior_works_parameter_count() -> None:
    net = DysonNet(arch="prior")
    assert count_parameters(net) == 691_283
    # and it reads a spectrum of any length
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 512))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("n_points", [512, 4096])
def test_fast_network_output_shape(n_points: int) -> None:
    net = DysonNet(arch="fast", width=8).eval()
    with torch.no_grad():
        out = net(torch.randn(3, n_points))
    assert out.shape == (3, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    six = DysonNet(arch="fast", width=8, n_outputs=6).eval()
    with torch.no_grad():
        assert six(torch.randn(2, n_points)).shape == (2, 6)


def test_fast_network_is_small_and_scales_with_width() -> None:
    n8, n32 = count_parameters(DysonNet(width=8)), count_parameters(DysonNet(width=32))
    assert n8 < n32 < 691_283
    assert n32 > 4 * n8  # conv weights grow with width squared


def test_eval_output_does_not_depend_on_batch_company() -> None:
    torch.manual_seed(0)
    net = DysonNet(width=8).eval()
    x = torch.randn(6, 512)
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)


def test_running_integral_channel() -> None:
    """The fourth input channel is the z-scored running sum of the spectrum about its
    mean: for a first-derivative Lorentzian it is the absorption line, peaked at B0."""
    from dysonian_pl.model import FOLD, folded_input_channels, running_integral

    t = torch.linspace(-10.0, 10.0, 4096)
    x = torch.stack([-2 * t / (1 + t * t) ** 2, -2 * (t - 2) / (1 + (t - 2) ** 2) ** 2])
    c = running_integral(x, x.mean(dim=-1, keepdim=True))
    assert c.dtype == torch.float32 and c.shape == x.shape
    torch.testing.assert_close(c.mean(dim=-1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(c.std(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    # the absorption 1 / (1 + t^2) peaks where the derivative crosses zero
    peaks = t[c.argmax(dim=-1)]
    torch.testing.assert_close(peaks, torch.tensor([0.0, 2.0]), atol=0.01, rtol=0)
    ref = torch.cumsum((x - x.mean(dim=-1, keepdim=True)).double(), dim=-1)
    ref = (ref - ref.mean(dim=-1, keepdim=True)) / ref.std(dim=-1, keepdim=True)
    torch.testing.assert_close(c, ref.float(), atol=1e-5, rtol=0)
    # folded: channels 3 FOLD .. 4 FOLD - 1 hold it; the first three are unchanged
    f3, f4 = folded_input_channels(x), folded_input_channels(x, integral=True)
    assert f3.shape == (2, 3 * FOLD, 1, 256) and f4.shape == (2, 4 * FOLD, 1, 256)
    assert torch.equal(f4[:, : 3 * FOLD], f3)
    torch.testing.assert_close(f4[:, 3 * FOLD :, 0].permute(0, 2, 1).reshape(2, -1), c)
    net = DysonNet(width=8, integral=True)
    assert net.features[0].in_channels == 4 * FOLD
    assert count_parameters(net) == count_parameters(DysonNet(width=8)) + FOLD * 8
    with pytest.raises(ValueError, match=r"model.integral: needs model.arch 'fast'"):
        DysonNet(arch="prior", integral=True)


def test_dispersion_channel() -> None:
    """The optional input channel after the integral is the Hilbert transform of the
    running integral: for the derivative of an absorption Lorentzian 1 / (1 + t^2) it is
    the dispersion Lorentzian t / (1 + t^2) (exact on an infinite axis; here the line
    fills a 100-half-width window), z-scored; the numpy twin gives the same numbers."""
    from dysonian_pl import npnet
    from dysonian_pl.model import FOLD, dispersion_channel, folded_input_channels

    t = torch.linspace(-50.0, 50.0, 4096, dtype=torch.float64)
    x = torch.stack([-2 * t / (1 + t * t) ** 2, -2 * (t - 5) / (1 + (t - 5) ** 2) ** 2]).float()
    h = dispersion_channel(x, x.mean(dim=-1, keepdim=True))
    assert h.dtype == torch.float32 and h.shape == x.shape
    torch.testing.assert_close(h.mean(dim=-1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.std(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    for row, shift in ((0, 0.0), (1, 5.0)):
        u = t - shift
        want = u / (1 + u * u)
        r = torch.corrcoef(torch.stack([h[row].double(), want]))[0, 1]
        assert r > 0.995, r
        # and not the absorption: the two quadratures are orthogonal
        absorption = 1 / (1 + u * u)
        assert abs(torch.corrcoef(torch.stack([h[row].double(), absorption]))[0, 1]) < 0.05
    x_np = x.numpy()
    ref = npnet.dispersion_channel(x_np, x_np.mean(axis=-1, keepdims=True, dtype=np.float64))
    np.testing.assert_allclose(h.numpy(), ref, atol=2e-5, rtol=0)
    # folded after the integral; the first four channels unchanged
    f4 = folded_input_channels(x, integral=True)
    f5 = folded_input_channels(x, integral=True, dispersion=True)
    assert f5.shape == (2, 5 * FOLD, 1, 256) and torch.equal(f5[:, : 4 * FOLD], f4)
    torch.testing.assert_close(f5[:, 4 * FOLD :, 0].permute(0, 2, 1).reshape(2, -1), h)
    net = DysonNet(width=8, integral=True, dispersion=True)
    assert net.features[0].in_channels == 5 * FOLD
    assert count_parameters(net) == count_parameters(DysonNet(width=8)) + 2 * FOLD * 8
    with pytest.raises(ValueError, match=r"model.dispersion: needs model.arch 'fast'"):
        DysonNet(arch="prior", dispersion=True)


@pytest.mark.parametrize("n_points", [4096, 1000, 130, 17])
@pytest.mark.parametrize("extra", [(False, False), (True, False), (False, True), (True, True)])
def test_stem_from_spectra_is_the_convolution_over_the_folded_channels(n_points, extra) -> None:
    """The stem computed from the spectra (no folded channels written) gives the 1x1
    convolution over `folded_input_channels`, with and without bias, its gradient
    too, for whole folds, ragged lengths and spectra shorter than the network's minimum."""
    from dysonian_pl.model import FOLD, folded_input_channels, stem_from_spectra

    integral, dispersion = extra
    torch.manual_seed(n_points)
    x = torch.randn(5, n_points) * 3 + 2
    x[1] = torch.linspace(-1, 1, n_points) ** 2  # a smooth row; row 2 flat
    x[2] = 0.25
    conv = torch.nn.Conv2d((3 + integral + dispersion) * FOLD, 8, 1)
    w1 = conv.weight.detach().clone().requires_grad_()
    w2 = conv.weight.detach().clone().requires_grad_()
    ref = torch.nn.functional.conv2d(folded_input_channels(x, integral, dispersion), w1, conv.bias)
    got = stem_from_spectra(x, w2, conv.bias, integral, dispersion)
    assert got.shape == ref.shape == (5, 8, 1, max(-(-n_points // FOLD), 8))
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-6)
    ref.square().sum().backward()
    got.square().sum().backward()
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-4)
    no_bias = stem_from_spectra(x, conv.weight, None, integral, dispersion)
    torch.testing.assert_close(no_bias + conv.bias.view(1, -1, 1, 1), got, rtol=1e-5, atol=2e-6)


def test_project_out_baseline_removes_any_polynomial_of_its_degree() -> None:
    """Spectra less their polynomial of degree d do not depend on a baseline of degree d
    (offset, slope, curvature: the simulator's), in torch and in numpy; a baseline of
    higher degree is not removed; with degree 2 the network's output and its channels
    do not move when a quadratic baseline is added, and the prior network refuses it."""
    from dysonian_pl.model import folded_input_channels, project_out_baseline

    torch.manual_seed(3)
    x = torch.randn(4, 1000)
    t = torch.linspace(-1.0, 1.0, 1000)
    quad = 0.3 - 0.7 * t + 0.9 * t * t
    got = project_out_baseline(x + quad, 2)
    torch.testing.assert_close(got, project_out_baseline(x, 2), rtol=0, atol=2e-6)
    # least squares: the rest is orthogonal to 1, t, t^2 and the fit is x's own
    basis = torch.stack([torch.ones_like(t), t, t * t], dim=1)
    assert float((got @ basis).abs().max()) < 1e-3
    coef = torch.linalg.lstsq(basis.double(), x.double().T).solution
    torch.testing.assert_close(
        got.double(), x.double() - (basis.double() @ coef).T, atol=1e-5, rtol=0
    )
    assert float((project_out_baseline(x + t**3, 2) - got).abs().max()) > 0.1
    assert project_out_baseline(x, -1) is x
    assert float(project_out_baseline(x[:, :3], 2).abs().max()) == 0.0
    from dysonian_pl import npnet

    np.testing.assert_allclose(
        npnet.project_out_baseline((x + quad).numpy(), 2), got.numpy(), rtol=0, atol=1e-5
    )
    net = DysonNet(width=8, integral=True, dispersion=True, detrend=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x + quad), net(x), rtol=0, atol=1e-4)
        torch.testing.assert_close(net(5 * x + quad), net(x), rtol=0, atol=1e-4)
    torch.testing.assert_close(
        folded_input_channels(x + quad, True, True, detrend=2),
        folded_input_channels(x, True, True, detrend=2), rtol=0, atol=1e-4,
    )  # fmt: skip
    plain = DysonNet(width=8, integral=True, dispersion=True).eval()
    with torch.no_grad():
        assert float((plain(x + quad) - plain(x)).abs().max()) > 1e-3
    with pytest.raises(ConfigError, match=r"model.detrend: needs model.arch 'fast'.*-1"):
        DysonNet(arch="prior", detrend=2)
    with pytest.raises(ConfigError, match=r"model.detrend: must be -1 \(none\) or a degree"):
        DysonNet(detrend=4)


def test_input_channels() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 300) * 3.0 + 0.7
    c = input_channels(x)
    assert c.shape == (4, 3, 300)
    torch.testing.assert_close(c[:, 0].mean(dim=-1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(c[:, 0].std(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(c[:, 1].amin(dim=-1), -torch.ones(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(c[:, 1].amax(dim=-1), torch.ones(4), atol=1e-6, rtol=0)
    # channel 1 is an affine map of the spectrum: its argmax/argmin are the spectrum's
    assert torch.equal(c[:, 1].argmax(dim=-1), x.argmax(dim=-1))
    torch.testing.assert_close(c[:, 2], torch.linspace(-1, 1, 300).expand(4, 300), atol=0, rtol=0)
    # a flat spectrum gives finite channels, not NaN
    flat = input_channels(torch.zeros(2, 128))
    assert torch.isfinite(flat).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet"}, r"arch:? must be one of 'fast', 'prior' \(got 'resnet'\)"),
        ({"width": 2}, r"width:? must be >= 4 \(got 2\)"),
        ({"dropout": 1.0}, r"dropout:? must be in \[0, 1\) \(got 1.0\)"),
        ({"dropout": -0.1}, r"dropout:? must be in \[0, 1\) \(got -0.1\)"),
        ({"depth": 0}, r"depth:? must be in 1..8 \(got 0\)"),
    ],
)
def test_invalid_network_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:  # ConfigError is a ValueError
        DysonNet(**kwargs)
    assert re.match(rf"^(model\.)?{message}$", str(info.value)), str(info.value)


def test_target_scaler_round_trip() -> None:
    ranges = {"B0": (3300.0, 3400.0), "dB": (3.0, 100.0), "p": (0.2, 2.0)}
    s = TargetScaler(ranges)
    y = torch.tensor([[3300.0, 3.0, 0.2], [3400.0, 100.0, 2.0], [3350.0, 51.5, 1.1]])
    z = s.scale(y)
    torch.testing.assert_close(z, torch.tensor([[0.0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5]]))
    torch.testing.assert_close(s.unscale(z), y.double(), atol=1e-4, rtol=0)
    # a degenerate range does not divide by zero
    flat = TargetScaler({"B0": (3350.0, 3350.0), "dB": (3.0, 4.0), "p": (1.0, 1.0)})
    assert torch.isfinite(flat.scale(y)).all()


def test_regressor_predicts_physical_units_and_checks_weights() -> None:
    sim = SimulationConfig(n_points=256)
    model = DysonianRegressor(sim=sim, width=8).eval()
    assert model.names == ("B0", "dB", "p")
    x = torch.randn(5, 256)
    phys = model.predict_physical(x)
    assert phys.dtype == torch.float64 and phys.shape == (5, 3)
    with torch.no_grad():
        z = model(x)
    # prediction runs a copy with batch norm folded in: equal to float32 rounding
    torch.testing.assert_close(
        phys, z.double() * model.scaler.span + model.scaler.lo, rtol=1e-6, atol=1e-5
    )
    # the loss is the weighted mean of squared scaled errors (weights 1, 1, 2)
    y = model.scaler.unscale(torch.zeros(5, 3)).float()
    zz = torch.tensor([[0.5, 0.0, 0.25]]).expand(5, 3)
    assert model._loss(zz, y).item() == pytest.approx((0.25 + 0 + 2 * 0.0625) / 4)
    with pytest.raises(ConfigError, match=r"model\.loss_weights: need three finite weights"):
        DysonianRegressor(sim=sim, loss_weights=(1.0, -1.0, 2.0))
    wide = SimulationConfig(B0=(3000, 5000), dB=(1000, 3000), window=(0, 10000), n_points=256)
    assert DysonianRegressor(sim=wide, width=8).names == ("B0", "dB", "alpha")


def _multiply_adds(net: torch.nn.Module, n_points: int) -> int:
    """Multiply-adds of one forward pass over convolutions and linear layers."""
    total = 0

    def hook(mod, _inp, out):
        nonlocal total
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)):
            total += out[0].numel() * mod.weight[0].numel()
        elif isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        net.eval()(torch.randn(1, n_points))
    for h in handles:
        h.remove()
    return total


def test_default_fast_network_costs_a_small_fraction_of_the_prior_one() -> None:
    fast, prior = _multiply_adds(DysonNet(), 4096), _multiply_adds(DysonNet("prior"), 4096)
    # 7.5 M vs 454 M multiply-adds per 4096-point spectrum (docs/benchmarks.md)
    assert 7.0e6 < fast < 8.0e6, fast
    assert prior > 50 * fast, (prior, fast)
    assert _multiply_adds(DysonNet(depth=2), 4096) > 1.5 * fast


@pytest.mark.parametrize("n_points", [4096, 1000, 17])
def test_fused_copy_predicts_what_the_trained_network_predicts(n_points: int) -> None:
    torch.manual_seed(1)
    net = DysonNet(width=8, depth=2, n_outputs=6)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # move the batch-norm statistics off their defaults
            net(torch.randn(16, n_points) * 2 + 1)
    net.eval()
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    x = torch.randn(5, n_points)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-4, atol=1e-5)


def test_regressor_prediction_follows_weight_updates() -> None:
    torch.manual_seed(2)
    model = DysonianRegressor(sim=SimulationConfig(n_points=512), width=8).eval()
    x = torch.randn(3, 512)
    before = model.predict_physical(x)
    with torch.no_grad():
        model.net.heads[0].bias.add_(0.5)  # an in-place update, as an optimizer makes
        reference = model.scaler.unscale(model(x))
    after = model.predict_physical(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, rtol=1e-6, atol=1e-6)
    model.load_state_dict(DysonianRegressor(sim=model.sim, width=8).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            model.predict_physical(x), model.scaler.unscale(model(x)), rtol=1e-6, atol=1e-6
        )
