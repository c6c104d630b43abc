"""The network: a plain `nn.Module` 1D residual CNN.

It takes the normalised spectrum (N, n_points) and builds its own three input
channels (per-spectrum z-score, peak-to-peak scaled to [-1, 1], field position in
[-1, 1]; the fast network optionally a fourth, the running integral, i.e. the
absorption line, and a fifth, its Hilbert transform, the dispersion quadrature; the
default `fit` uses both) so training and inference cannot disagree. Two architectures:

* ``"prior"``: the prior work's network, exactly 691,283 parameters (physics.md).
* ``"fast"`` (default): the spectrum is folded at once to 1/16 resolution, the 16
  neighbouring points of each of the three (to five) channels becoming 48 (to 80) channels
  (space-to-depth: nothing is discarded, and a 1x1 convolution learns the local
  filters). Four stages of residual blocks (widths w, 2w, 8w/3, 4w) halve the length
  between stages; attention pooling returns pooled features and the expected field
  position per head, which is what B0 needs. With w = 24, 7.5 M multiply-adds per
  spectrum: 1/60 of the prior network's. Convolutions run as 1 x k 2-D convolutions in
  channels-last layout, the fastest CPU path measured here (docs/benchmarks.md). The
  first of them, over the folded channels, is computed from the spectra without
  writing those channels (`stem_from_spectra`; `folded_input_channels` defines them).
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .params import ConfigError

ARCHITECTURES = ("fast", "prior")

#: length reduction of the fast network's space-to-depth stem
FOLD = 16


@functools.lru_cache(maxsize=16)
def _polynomial_basis(length: int, degree: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(length, degree + 1): an orthonormal basis of the polynomials of that degree on
    `length` equally spaced points (QR of the Vandermonde matrix in float64)."""
    t = torch.linspace(-1.0, 1.0, length, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.stack([t**k for k in range(degree + 1)], dim=1))
    return q.to(device=device, dtype=dtype)


def project_out_baseline(x: torch.Tensor, degree: int) -> torch.Tensor:
    """(N, L) spectra less their least-squares polynomial of `degree` over the window
    (degree < 0: `x` itself). What is left does not depend on a baseline of that
    degree at all: a baseline offset, slope and curvature (the simulator's, degree 2)
    are removed exactly, together with the part of the line that no fit could tell
    from them."""
    if degree < 0:
        return x
    if x.shape[-1] <= degree + 1:
        return x - x  # every row is a polynomial of that degree
    q = _polynomial_basis(x.shape[-1], degree, x.dtype, str(x.device))
    return x - (x @ q) @ q.T


def _inverse_std(d: torch.Tensor) -> torch.Tensor:
    """1 / (unbiased standard deviation) per row of the mean-free rows `d`, guarded against
    flat rows (std at least 1e-6). A norm of the centred rows: the same number as
    `torch.var_mean`, at a tenth of its cost on a CPU."""
    n = max(d.shape[-1] - 1, 1)
    std = torch.linalg.vector_norm(d, dim=-1, keepdim=True) / math.sqrt(n)
    return std.clamp_min(1e-6).reciprocal()


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-spectrum (mean, std, min, span) of (N, L) spectra, guarded against flat ones."""
    mean = x.mean(dim=-1, keepdim=True)
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    return mean, _inverse_std(x - mean).reciprocal(), lo, (hi - lo).clamp_min(1e-12)


def input_channels(x: torch.Tensor) -> torch.Tensor:
    """(N, L) normalised spectra -> (N, 3, L): z-score, peak-to-peak in [-1, 1], position."""
    mean, std, lo, span = _statistics(x)
    ptp = 2.0 * (x - lo) / span - 1.0
    pos = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device, dtype=x.dtype).expand_as(x)
    return torch.stack([(x - mean) / std, ptp, pos], dim=1)


def _cumulative(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The running sum of x - mean in x's dtype. In float32 over 4096 points of a
    peak-to-peak-1 spectrum it differs from a float64 sum by about 1e-7 of its standard
    deviation, and costs a fifth of the time."""
    return torch.cumsum(x - mean, dim=-1)


def running_integral(
    x: torch.Tensor, mean: torch.Tensor, c: torch.Tensor | None = None
) -> torch.Tensor:
    """The z-scored running integral of (N, L) spectra about their `mean`: the absorption
    line of a first-derivative spectrum, in x's dtype.
    `c`: that running sum (`_cumulative`), if already computed."""
    c = _cumulative(x, mean) if c is None else c
    c = c - c.mean(dim=-1, keepdim=True)
    return c.mul_(_inverse_std(c))


def _hilbert_of_integral(c: torch.Tensor) -> torch.Tensor:
    """The Hilbert transform of the running sums `c` (N, L), not normalised: the straight
    line through their end values removed, then an FFT in c's dtype, the zero-frequency
    and Nyquist terms dropped and the rest multiplied by -i (exactly: a swap and a sign)."""
    n = c.shape[-1]
    ramp = torch.linspace(0.0, 1.0, n, device=c.device, dtype=c.dtype)
    c = (c - c[:, :1]).sub_((c[:, -1:] - c[:, :1]) * ramp)
    spec = torch.fft.rfft(c, dim=-1).mul_(-1j)
    spec[:, 0] = 0
    if n % 2 == 0:
        spec[:, -1] = 0
    return torch.fft.irfft(spec, n=n, dim=-1)


def dispersion_channel(
    x: torch.Tensor, mean: torch.Tensor, c: torch.Tensor | None = None
) -> torch.Tensor:
    """The z-scored Hilbert transform of the running integral of (N, L) spectra about their
    `mean`: for a first-derivative line, the other quadrature of its absorption line
    (an absorption Lorentzian gives the dispersion Lorentzian). The straight line
    through the integral's end values is removed first (a line cut by the window, or a
    baseline, leaves the integral open-ended); see `_hilbert_of_integral`. `c`: the
    running sum (`_cumulative`), if already computed."""
    c = _cumulative(x, mean) if c is None else c
    h = _hilbert_of_integral(c)
    h = h.sub_(h.mean(dim=-1, keepdim=True))
    return h.mul_(_inverse_std(h))


def folded_input_channels(
    x: torch.Tensor,
    integral: bool = False,
    dispersion: bool = False,
    detrend: int = -1,
) -> torch.Tensor:
    """(N, L) spectra -> the input channels folded by `FOLD`, as (N, C FOLD, 1, L') in
    channels-last layout, written in one pass: C = 3 (z-score, peak-to-peak in [-1, 1],
    position), plus `running_integral` with `integral` and `dispersion_channel` with
    `dispersion`, in that order; all of the spectrum less its polynomial baseline of
    degree `detrend` (`project_out_baseline`; -1: none).

    Channel ``c * FOLD + k`` at position ``j`` is input channel ``c`` at point
    ``j * FOLD + k``. The spectrum is padded with its edge values to whole folds and to
    at least one position after the network's three halvings (statistics, and the
    integral, are those of the unpadded spectrum).
    """
    x = project_out_baseline(x, detrend)
    n, length = x.shape
    mean, std, lo, span = _statistics(x)
    pos = torch.linspace(-1.0, 1.0, length, device=x.device, dtype=x.dtype)
    c = _cumulative(x, mean) if integral or dispersion else None
    extra = [running_integral(x, mean, c)] if integral else []
    if dispersion:
        extra.append(dispersion_channel(x, mean, c))
    padded = _padded_length(length)
    if padded != length:
        x = F.pad(x[:, None], (0, padded - length), mode="replicate")[:, 0]
        pos = F.pad(pos[None, None], (0, padded - length), mode="replicate")[0, 0]
        extra = [F.pad(c[:, None], (0, padded - length), mode="replicate")[:, 0] for c in extra]
    m = padded // FOLD
    folded = torch.cat(
        [
            ((x - mean) / std).view(n, m, FOLD),
            (2.0 * (x - lo) / span - 1.0).view(n, m, FOLD),
            pos.view(1, m, FOLD).expand(n, m, FOLD),
            *(c.reshape(n, m, FOLD) for c in extra),
        ],
        dim=-1,
    )  # (N, L', C FOLD): the memory order of channels-last (N, C FOLD, 1, L')
    return folded.view(n, 1, m, folded.shape[-1]).permute(0, 3, 1, 2)


def _padded_length(length: int) -> int:
    """Whole folds, and at least one position after the fast network's three halvings."""
    return max(-(-length // FOLD) * FOLD, 8 * FOLD)


def stem_from_spectra(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    integral: bool = False,
    dispersion: bool = False,
    detrend: int = -1,
) -> torch.Tensor:
    """The fast network's first layer, a 1x1 convolution over `folded_input_channels`
    (`weight` (W, C FOLD, 1, 1), `bias` (W,) or None), computed from the (N, L) spectra
    without building those channels: the same numbers, as (N, W, 1, L') in channels-last
    layout.

    Every input channel is an affine function, per spectrum, of a row the network
    needs anyway (the mean-free spectrum, its running sum, their Hilbert transform), and
    the position channel is the same for every spectrum. So the convolution is one
    batched product per row with the weights scaled per spectrum, plus a constant:
    a third of the cost of writing the folded channels, which for the default network
    took a third of the time of batched inference on a CPU (docs/benchmarks.md).
    Differentiable in `weight` and `bias`; `DysonNet` uses it to train and to predict.
    """
    x = project_out_baseline(x, detrend)
    n, length = x.shape
    n_in = 3 + bool(integral) + bool(dispersion)
    w = weight.reshape(weight.shape[0], n_in, FOLD).permute(1, 2, 0)  # (C, FOLD, W)
    mean = x.mean(dim=-1, keepdim=True)
    d = x - mean
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale = 2.0 / (hi - lo).clamp_min(1e-12)  # peak-to-peak channel = scale * d + offset
    offset = scale * (mean - lo) - 1.0
    rows = [(d, _inverse_std(d)[:, :, None] * w[0] + scale[:, :, None] * w[1])]
    if integral or dispersion:
        c = torch.cumsum(d, dim=-1)
        k = 3
        if integral:
            cc = c - c.mean(dim=-1, keepdim=True)
            rows.append((cc, _inverse_std(cc)[:, :, None] * w[k]))
            k += 1
        if dispersion:
            h = _hilbert_of_integral(c)
            h = h.sub_(h.mean(dim=-1, keepdim=True))
            rows.append((h, _inverse_std(h)[:, :, None] * w[k]))
    pos = torch.linspace(-1.0, 1.0, length, device=x.device, dtype=x.dtype)
    padded = _padded_length(length)
    if padded != length:
        rows = [(F.pad(r[:, None], (0, padded - length), mode="replicate")[:, 0], wr)
                for r, wr in rows]  # fmt: skip
        pos = F.pad(pos[None, None], (0, padded - length), mode="replicate")[0, 0]
    m = padded // FOLD
    r0, w0 = rows[0]
    out = torch.bmm(r0.view(n, m, FOLD), w0)  # (N, L', W): channels-last (N, W, 1, L')
    for r, wr in rows[1:]:
        out.baddbmm_(r.view(n, m, FOLD), wr)
    const = pos.view(m, FOLD) @ w[2]  # (L', W)
    if bias is not None:
        const = const + bias
    out.add_(const).add_((offset * w[1].sum(dim=0))[:, None, :])  # (N, 1, W) per spectrum
    return out.view(n, 1, m, weight.shape[0]).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """Two dilated convolutions, 1x1 projection on the skip when the width changes, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, norm: bool) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=not norm)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=dilation, bias=not norm)
        self.bn1 = nn.BatchNorm1d(c_out) if norm else nn.Identity()
        self.bn2 = nn.BatchNorm1d(c_out) if norm else nn.Identity()
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.act(h + self.skip(x))


class Block2d(nn.Module):
    """Residual block on (N, C, 1, L): two 1 x k dilated convolutions with batch norm."""

    def __init__(self, c: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = (0, dilation * (kernel - 1) // 2)
        k, d = (1, kernel), (1, dilation)
        self.conv1 = nn.Conv2d(c, c, k, padding=pad, dilation=d, bias=False)
        self.conv2 = nn.Conv2d(c, c, k, padding=pad, dilation=d, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(h)), inplace=True)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, (1, kernel), stride=(1, stride), bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class AttentionPool(nn.Module):
    """Softmax attention over positions: pooled features plus expected position per head."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.logits = nn.Conv1d(channels, heads, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.logits(h), dim=-1)  # (N, H, L)
        pos = torch.linspace(-1.0, 1.0, h.shape[-1], device=h.device, dtype=h.dtype)
        pooled = torch.einsum("nhl,ncl->nhc", w, h).flatten(1)
        where = (w * pos).sum(dim=-1)  # (N, H)
        return torch.cat([pooled, where], dim=1)


class DysonNet(nn.Module):
    """Spectrum (N, n_points) -> outputs (N, n_outputs) in scaled target units.

    Args:
        arch: ``"fast"`` (default) or ``"prior"`` (the prior work's 691,283-parameter network).
        width: base channel count of the fast network (stages use w, 2w, 8w/3, 4w).
        depth: residual blocks per stage of the fast network (dilations 1, 2, 4, ...).
        dropout: dropout before the heads.
        n_outputs: 3 (B0, dB, p), or 6 with a log-standard-deviation per parameter.
        integral: fast network only: a fourth input channel, the spectrum's running
            integral (its absorption line; `running_integral`).
        dispersion: fast network only: one more input channel, the Hilbert transform of
            the running integral (the dispersion quadrature; `dispersion_channel`).
        detrend: fast network only: the degree of the polynomial baseline projected out of
            the spectrum before its input channels are built (`project_out_baseline`;
            -1, the default: none; 2: the simulator's offset, slope and curvature).
    """

    def __init__(
        self,
        arch: str = "fast",
        width: int = 24,
        dropout: float = 0.1,
        n_outputs: int = 3,
        depth: int = 1,
        integral: bool = False,
        dispersion: bool = False,
        detrend: int = -1,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"model.arch: must be one of {', '.join(map(repr, ARCHITECTURES))} (got {arch!r})"
            )
        if width < 4:
            raise ConfigError(f"model.width: must be >= 4 (got {width})")
        if not 1 <= depth <= 8:
            raise ConfigError(f"model.depth: must be in 1..8 (got {depth})")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1) (got {dropout})")
        if not -1 <= int(detrend) <= 3:
            raise ConfigError(f"model.detrend: must be -1 (none) or a degree 0..3 (got {detrend})")
        fast_only = (("integral", integral), ("dispersion", dispersion), ("detrend", detrend >= 0))
        for name, on in fast_only:
            if on and arch != "fast":
                off = "-1" if name == "detrend" else "false"
                raise ConfigError(
                    f"model.{name}: needs model.arch 'fast' (got {arch!r}); "
                    f"set model.{name} {off} (--model.{name} {off}) for this architecture"
                )
        self.arch, self.n_outputs, self.integral = arch, n_outputs, bool(integral)
        self.dispersion = bool(dispersion)
        self.detrend = int(detrend)
        if arch == "prior":
            self.features, feat = self._prior_features(), 128
            self.pool: nn.Module = nn.AdaptiveAvgPool1d(1)
            self.trunk = nn.Sequential(
                nn.Linear(feat, 512), nn.ReLU(inplace=True), nn.Dropout(dropout)
            )
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Linear(128, 1))
                for _ in range(n_outputs)
            )
        else:
            channels = 3 + self.integral + self.dispersion
            self.features, feat = self._fast_features(width, depth, channels)
            heads = 4
            self.pool = AttentionPool(feat, heads)
            pooled = heads * feat + heads
            self.trunk = nn.Sequential(
                nn.Linear(pooled, 256), nn.ReLU(inplace=True), nn.Dropout(dropout)
            )
            self.heads = nn.ModuleList([nn.Linear(256, n_outputs)])

    @staticmethod
    def _prior_features() -> nn.Sequential:
        r = nn.ReLU(inplace=True)
        return nn.Sequential(
            nn.Conv1d(3, 32, 9, padding=4), r,
            nn.Conv1d(32, 48, 7, padding=3), r,
            nn.MaxPool1d(2),
            ResBlock(48, 64, 5, 1, False), ResBlock(64, 64, 5, 2, False),
            nn.MaxPool1d(2),
            ResBlock(64, 96, 5, 2, False), ResBlock(96, 96, 3, 4, False),
            nn.MaxPool1d(2),
            ResBlock(96, 128, 3, 4, False), ResBlock(128, 128, 3, 8, False),
        )  # fmt: skip

    @staticmethod
    def _fast_features(w: int, depth: int, channels: int = 3) -> tuple[nn.Sequential, int]:
        widths = (w, 2 * w, (8 * w) // 3, 4 * w)
        layers = _conv_bn_relu(channels * FOLD, widths[0], 1, 1)
        for i, c in enumerate(widths):
            if i:
                layers += _conv_bn_relu(widths[i - 1], c, 2, 2)
            layers += [Block2d(c, 3, 2**j) for j in range(depth)]
        return nn.Sequential(*layers), widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "prior":
            h = self.features(input_channels(x))
        else:
            stem = self.features[0]  # the 1x1 convolution over the folded input channels
            h = stem_from_spectra(
                x,
                stem.weight,
                stem.bias,
                self.integral,
                self.dispersion,
                self.detrend,
            )
            for i, layer in enumerate(self.features):
                if i:
                    h = layer(h)
            h = h.squeeze(2)
        z = self.trunk(self.pool(h).flatten(1))
        return torch.cat([head(z) for head in self.heads], dim=1)


def fuse_for_inference(net: DysonNet) -> DysonNet:
    """An eval-mode copy of `net` with every batch norm folded into the convolution before it.

    Same outputs (to float32 rounding) with a third fewer operations per forward pass;
    for prediction only (the copy has no batch-norm statistics to train).
    """
    fused = copy.deepcopy(net).eval()
    for module in fused.modules():
        if isinstance(module, Block2d):
            module.conv1 = fuse_conv_bn_eval(module.conv1, module.bn1)
            module.conv2 = fuse_conv_bn_eval(module.conv2, module.bn2)
            module.bn1, module.bn2 = nn.Identity(), nn.Identity()
        elif isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    fused.requires_grad_(False)
    return fused


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
