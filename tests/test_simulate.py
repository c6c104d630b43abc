"""The simulator: a pure function of (config, seed, index), and each augmentation measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.ndimage import gaussian_filter1d

from dysonian_pl.lineshapes import dysonian, joshi
from dysonian_pl.params import Augmentations, SimulationConfig
from dysonian_pl.simulate import draw_targets, field_axis, simulate

N = 512
#: one seed wherever noise is on: the simulator keeps the noise bank of the last two seeds
SEED = 3
OFF = dict(noise=False, baseline_offset=0.0, baseline_slope=0.0, baseline_curvature=0.0)
CLEAN = Augmentations(**OFF, smooth_prob=0.0)
# lines whose whole shape (several widths either side) lies inside the set-4 window
INSIDE = dict(B0=(3330.0, 3380.0), dB=(3.0, 20.0), n_points=N)


def cfg(augment: Augmentations | None = None, **kw) -> SimulationConfig:
    kw = {"n_points": N, **kw}
    return SimulationConfig(augment=augment or Augmentations(), **kw)


def sim(c: SimulationConfig, seed: int, index, **kw) -> tuple[np.ndarray, np.ndarray]:
    x, y = simulate(c, seed, index, **kw)
    assert x.dtype == torch.float32 and y.dtype == torch.float64
    return x.numpy(), y.numpy()


# ---------------------------------------------------------------- determinism
ALL_ON = Augmentations(spike_prob=0.5, smooth_prob=0.3)


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_same_index_same_spectrum_whatever_the_chunk(chunk: int) -> None:
    c = cfg(Augmentations(spike_prob=0.5))
    idx = np.arange(100, 228)
    ref, y_ref = sim(c, SEED, idx, chunk=256)
    x, y = sim(c, SEED, idx, chunk=chunk)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y, y_ref)


def test_same_index_same_spectrum_whatever_the_company() -> None:
    c = cfg(Augmentations(spike_prob=0.5))
    idx = np.arange(0, 300, 3)
    x, y = sim(c, SEED, idx)
    xr, yr = sim(c, SEED, idx[::-1].copy())
    np.testing.assert_allclose(xr[::-1], x, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(yr[::-1], y)
    xs, ys = sim(c, SEED, idx[17:41])
    np.testing.assert_allclose(xs, x[17:41], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ys, y[17:41])
    x1, _ = sim(c, SEED, int(idx[5]))  # a scalar index is one spectrum
    np.testing.assert_allclose(x1[0], x[5], rtol=0, atol=1e-6)


def test_smoothed_spectrum_does_not_depend_on_chunk() -> None:
    c = cfg(Augmentations(**OFF, smooth_prob=1.0, smooth_sigma_points=(0.6, 2.5)), dB=(3.0, 5.0))
    c = c.replace(n_points=256)
    idx = np.arange(200)
    together, _ = sim(c, 0, idx)
    alone, _ = sim(c, 0, idx, chunk=1)
    np.testing.assert_allclose(alone, together, rtol=0, atol=1e-6)


def test_different_seeds_differ() -> None:
    c = cfg()
    a, ya = sim(c, SEED, np.arange(50))
    b, yb = sim(c, SEED + 1, np.arange(50))
    assert np.all(np.abs(ya - yb).max(axis=0) > 0)
    assert np.all(np.abs(a - b).max(axis=1) > 1e-3)
    # and different indices of one seed differ too
    assert np.abs(a[0] - a[1]).max() > 1e-3


def test_independent_of_global_random_state() -> None:
    """The global generators are deliberately set here (and restored): the simulator
    must neither read them nor advance them."""
    c = cfg(ALL_ON)
    idx = np.arange(40)
    saved_torch, saved_np = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    try:
        torch.manual_seed(1)
        np.random.seed(1)  # noqa: NPY002
        a, ya = sim(c, SEED, idx)
        torch.manual_seed(2)
        np.random.seed(2)  # noqa: NPY002
        t_state, n_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
        b, yb = sim(c, SEED, idx)
        after = np.random.get_state()  # noqa: NPY002
        assert torch.equal(torch.get_rng_state(), t_state)
    finally:
        torch.set_rng_state(saved_torch)
        np.random.set_state(saved_np)  # noqa: NPY002
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert after[0] == n_state[0] and np.array_equal(after[1], n_state[1])
    assert after[2:] == n_state[2:]


def test_index_validation() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        simulate(cfg(), 0, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        simulate(cfg(), 0, [0], chunk=0)


# ---------------------------------------------------------------- normalisation, shape
@pytest.mark.parametrize(
    "c",
    [
        cfg(ALL_ON),
        cfg(
            ALL_ON, geometry="sphere", B0=(3345, 3360), dB=(3, 12), p=(1, 4.5), window=(3326, 3376)
        ),
        cfg(CLEAN),
    ],
    ids=["plate-all-augmentations", "sphere-all-augmentations", "clean"],
)
def test_every_row_has_peak_to_peak_one(c: SimulationConfig) -> None:
    x, _ = sim(c, SEED, np.arange(200))
    assert x.shape == (200, N)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.ptp(x, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("geometry", "p"), [("plate", (0.2, 2.0)), ("sphere", (1.0, 4.5)), ("plate", (2.0, 8.0))]
)
def test_clean_line_is_lineshapes_dysonian(geometry: str, p) -> None:
    c = cfg(CLEAN, geometry=geometry, p=p, **INSIDE)
    x, y = sim(c, 1, np.arange(200))
    ref = dysonian(field_axis(c), y[:, 0], y[:, 1], y[:, 2], geometry)
    ref = ref / np.ptp(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)
    # polarity: a whole line inside the window has its low-field lobe first (max before min)
    assert np.all(x.argmax(axis=1) < x.argmin(axis=1))
    assert np.all(ref.argmax(axis=1) < ref.argmin(axis=1))


def test_polarity_with_default_augmentations() -> None:
    x, _ = sim(cfg(**INSIDE), SEED, np.arange(200))
    assert np.all(x.argmax(axis=1) < x.argmin(axis=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_polarity_rule_is_the_same_for_numpy_arrays_and_tensors(dtype) -> None:
    """The polarity rule (first extremum a minimum -> -1) on ties, a strided view and a
    3-D batch: torch tensors (numpy's argmax on the CPU for float32/64, torch's max
    with indices otherwise) agree with numpy arrays and with torch's max/min indices."""
    from dysonian_pl.preprocess import normalise, polarity_sign

    rows = np.array(
        [
            [0.0, 1.0, 0.0, -1.0, 0.0, 1.0],  # max tied, first max before min: +1
            [0.0, -1.0, 1.0, -1.0, 1.0, 0.0],  # min tied, first min first: -1
            [2.0, 2.0, 2.0, -2.0, -2.0, 0.0],
            [-3.0, 0.5, 0.5, 0.5, 4.0, 4.0],  # min at index 0: -1
            [5.0, 0.0, 0.0, 0.0, 0.0, -5.0],
        ]
    )
    want = np.array([1.0, -1.0, 1.0, -1.0, 1.0])[:, None]
    t = torch.tensor(rows, dtype=dtype)
    np.testing.assert_array_equal(polarity_sign(rows), want)
    np.testing.assert_array_equal(polarity_sign(t).double().numpy(), want)
    hi, imax = t.max(dim=-1, keepdim=True)
    lo, imin = t.min(dim=-1, keepdim=True)
    np.testing.assert_array_equal(torch.where(imin < imax, -1.0, 1.0).numpy(), want)
    view = torch.tensor(np.stack([rows, -rows], axis=-1).reshape(5, 12), dtype=dtype)[:, ::2]
    assert not view.is_contiguous()
    np.testing.assert_array_equal(polarity_sign(view).double().numpy(), want)
    batch = t.reshape(1, 5, 6).expand(2, 5, 6)
    assert polarity_sign(batch).shape == (2, 5, 1)
    np.testing.assert_array_equal(polarity_sign(batch)[1].double().numpy(), want)
    got = normalise(t).double().numpy()
    np.testing.assert_allclose(got, normalise(rows), rtol=1e-3)
    np.testing.assert_allclose(np.ptp(got, axis=1), 1.0, rtol=1e-3)


def test_field_axis() -> None:
    c = cfg()
    ax = field_axis(c)
    assert ax.shape == (N,)
    assert ax[0] == c.window[0] and ax[-1] == pytest.approx(c.window[1], abs=1e-9)
    np.testing.assert_allclose(np.diff(ax), (c.window[1] - c.window[0]) / (N - 1), rtol=1e-9)


def test_wide_lines() -> None:
    c = SimulationConfig(
        B0=(3000.0, 5000.0), dB=(1000.0, 3000.0), alpha=(0.0, 1.0),
        window=(0.0, 10000.0), n_points=256, augment=CLEAN,
    )  # fmt: skip
    assert c.target_names == ("B0", "dB", "alpha")
    x, y = sim(c, 0, np.arange(100))
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.ptp(x, axis=1), 1.0, atol=1e-5)
    for k, (lo, hi) in enumerate([c.B0, c.dB, c.alpha]):
        assert y[:, k].min() >= lo and y[:, k].max() <= hi
    ref = joshi(field_axis(c), y[:, 0], y[:, 1], y[:, 2])
    ref = ref / np.ptp(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)
    # with the default augmentations still finite and normalised
    x2, _ = sim(c.replace(augment=ALL_ON), SEED, np.arange(100))
    assert np.isfinite(x2).all()
    np.testing.assert_allclose(np.ptp(x2, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- targets
def test_targets_uniform_within_ranges() -> None:
    c = SimulationConfig()  # set-4
    y = draw_targets(c, 7, np.arange(5000))
    assert y.shape == (5000, 3) and y.dtype == np.float64
    for k, (lo, hi) in enumerate([c.B0, c.dB, c.p]):
        col = y[:, k]
        span = hi - lo
        assert col.min() >= lo and col.max() < hi
        assert col.min() < lo + 0.002 * span and col.max() > hi - 0.002 * span
        sd_mean = span / np.sqrt(12 * 5000)
        assert abs(col.mean() - (lo + hi) / 2) < 4 * sd_mean
        assert stats.kstest(col, "uniform", args=(lo, span)).pvalue > 1e-3
    # the three parameters are drawn independently
    r = np.corrcoef(y.T)
    assert np.abs(r[np.triu_indices(3, 1)]).max() < 0.05
    # and simulate returns the same targets
    _, y2 = sim(c.replace(n_points=256, augment=CLEAN), 7, np.arange(50))
    np.testing.assert_array_equal(y2, y[:50])


def test_log_dB_with_a_narrow_share_is_two_log_uniform_pieces() -> None:
    base = SimulationConfig(
        B0=(100, 900), dB=(10, 500), p=(0.05, 2.65), window=(0, 1000), log_dB=True
    )
    c = base.replace(dB_narrow=(40.0, 0.1))
    n = 40000
    y = draw_targets(c, 3, np.arange(n))
    dB = y[:, 1]
    below = dB < 40.0
    assert abs(below.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)
    # log-uniform within each piece
    lo_part = (np.log(dB[below]) - np.log(10.0)) / np.log(4.0)
    hi_part = (np.log(dB[~below]) - np.log(40.0)) / np.log(12.5)
    assert stats.kstest(lo_part, "uniform").pvalue > 1e-3
    assert stats.kstest(hi_part, "uniform").pvalue > 1e-3
    assert dB.min() >= 10.0 and dB.max() < 500.0
    # plain log-uniform puts 35 % below 40 G (ln 4 / ln 50); the other targets are unchanged
    plain = draw_targets(base, 3, np.arange(n))
    assert abs((plain[:, 1] < 40.0).mean() - np.log(4) / np.log(50)) < 0.01
    np.testing.assert_array_equal(plain[:, [0, 2]], y[:, [0, 2]])
    # the same uniform drawn through the two CDFs: the order of the widths is kept
    np.testing.assert_array_equal(np.argsort(plain[:, 1]), np.argsort(dB))


# ---------------------------------------------------------------- augmentations
def _fit_scale(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Least-squares c per row with noisy ~ c * clean."""
    return (noisy * clean).sum(axis=1) / (clean * clean).sum(axis=1)


@pytest.mark.parametrize("snr_db", [40.0, 55.0])
def test_noise_has_the_drawn_snr(snr_db: float) -> None:
    base = dict(smooth_prob=0.0, baseline_offset=0.0, baseline_slope=0.0, baseline_curvature=0.0)
    noisy_c = cfg(Augmentations(**base, noise=True, snr_db=(snr_db, snr_db)))
    clean_c = cfg(Augmentations(**base, noise=False))
    idx = np.arange(200)
    noisy, _ = sim(noisy_c, SEED, idx)
    clean, _ = sim(clean_c, SEED, idx)
    scale = _fit_scale(noisy, clean)
    resid = noisy - scale[:, None] * clean
    p_signal = scale**2 * np.mean(clean**2, axis=1)
    p_noise = np.mean(resid**2, axis=1)
    measured = 10 * np.log10(p_signal / p_noise)
    assert abs(measured.mean() - snr_db) < 0.2
    # per spectrum the noise power of 512 samples scatters by sqrt(2/512) = 6 % (0.27 dB)
    assert measured.std() < 0.5
    # baseline off: the noise has mean zero (4 sigma of the grand mean)
    sigma = np.sqrt(p_noise.mean())
    assert abs(resid.mean()) < 4 * sigma / np.sqrt(resid.size)
    # white: neighbouring samples uncorrelated
    lag1 = np.mean(resid[:, 1:] * resid[:, :-1]) / np.mean(resid**2)
    assert abs(lag1) < 0.02


def test_baseline_offset_slope_curvature() -> None:
    amps = dict(baseline_offset=0.01, baseline_slope=0.02, baseline_curvature=0.01)
    with_base = cfg(Augmentations(noise=False, smooth_prob=0.0, **amps))
    idx = np.arange(200)
    x, _ = sim(with_base, 6, idx)
    clean, _ = sim(cfg(CLEAN), 6, idx)
    t = np.linspace(-1.0, 1.0, N)
    coef = np.empty((len(idx), 4))
    for i in range(len(idx)):
        basis = np.stack([clean[i], np.ones(N), t, t * t], axis=1)
        coef[i], *_ = np.linalg.lstsq(basis, x[i], rcond=None)
        resid = x[i] - basis @ coef[i]
        assert np.abs(resid).max() < 2e-6  # nothing but line + quadratic
    rel = coef[:, 1:] / coef[:, :1]  # amplitudes relative to the line's peak-to-peak
    for k, amp in enumerate(amps.values()):
        assert np.abs(rel[:, k]).max() <= amp * (1 + 1e-4)
        assert np.abs(rel[:, k]).max() > 0.9 * amp  # uniform in [-amp, amp]
        assert (rel[:, k] > 0).mean() == pytest.approx(0.5, abs=0.15)


def test_smoothing_is_gaussian_and_removes_high_frequencies() -> None:
    sigma = 2.0
    # narrow lines (8-15 points peak to peak), which have high frequencies to lose
    narrow = dict(B0=(3330.0, 3380.0), dB=(3.0, 6.0))
    smooth_c = cfg(
        Augmentations(**OFF, smooth_prob=1.0, smooth_sigma_points=(sigma, sigma)), **narrow
    )
    idx = np.arange(100)
    smooth, _ = sim(smooth_c, 8, idx)
    clean, _ = sim(cfg(CLEAN, **narrow), 8, idx)
    ref = gaussian_filter1d(clean.astype(np.float64), sigma, axis=1, mode="nearest", truncate=4.0)
    ref /= np.ptp(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(smooth, ref, rtol=0, atol=1e-5)

    # energy above f = 1/8 cycle per point (of the first difference, free of the
    # wrap-around step): Gaussian sigma 2 points passes exp(-(2 pi sigma f)^2) < 8.5 %
    def high(v: np.ndarray) -> np.ndarray:
        power = np.abs(np.fft.rfft(np.diff(v, axis=1), axis=1)) ** 2
        return power[:, np.fft.rfftfreq(v.shape[1] - 1) >= 0.125].sum(axis=1)

    assert np.all(high(smooth) < 0.1 * high(clean))
    # smoothing probability 0.3: about 30 % of spectra are smoothed, the rest untouched
    some, _ = sim(cfg(Augmentations(**OFF, smooth_prob=0.3)), 8, np.arange(400))
    base, _ = sim(cfg(CLEAN), 8, np.arange(400))
    touched = np.abs(some - base).max(axis=1) > 1e-5
    assert touched.mean() == pytest.approx(0.3, abs=0.07)


def _regions(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def test_spikes_add_one_or_two_localized_bumps() -> None:
    spiky = cfg(Augmentations(**OFF, smooth_prob=0.0, spike_prob=1.0), **INSIDE)
    idx = np.arange(200)
    x, _ = sim(spiky, 12, idx)
    clean, _ = sim(cfg(CLEAN, **INSIDE), 12, idx)
    counts = []
    for i in range(len(idx)):
        keep = np.ones(N, dtype=bool)
        for _ in range(3):  # fit the line's scale on the points the spikes leave alone
            c = (x[i, keep] @ clean[i, keep]) / (clean[i, keep] @ clean[i, keep])
            r = x[i] - c * clean[i]
            keep = ~np.convolve(np.abs(r) > 1e-4, np.ones(31), mode="same").astype(bool)
        bumps = _regions(np.abs(r) > 0.004)  # smallest spike 0.01, half max 0.005
        counts.append(len(bumps))
        assert 1 <= len(bumps) <= 2, (i, bumps)
        for a, b in bumps:
            assert b - a <= 40  # half width at half max <= 5 points
        assert np.abs(r).max() <= 0.1  # two spikes of at most 0.05 each
        assert np.abs(r[keep]).max() < 1e-4  # untouched elsewhere
    assert set(counts) == {1, 2}
