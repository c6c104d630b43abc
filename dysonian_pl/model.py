"""The network: a plain `nn.Module` 1D residual CNN.

It takes the normalised spectrum (N, n_points) and builds its own three input
channels (per-spectrum z-score, peak-to-peak scaled to [-1, 1], field position in
[-1, 1]) so training and inference cannot disagree. Two architectures:

* ``"prior"``: the prior work's network, exactly 691,283 parameters (physics.md).
* ``"fast"`` (default): a strided stem takes the spectrum to 1/4 resolution at
  once, then dilated residual stages with batch norm halve it three more times;
  attention pooling returns both pooled features and the expected field position
  per head, which is what B0 needs. About 1/20 of the prior network's FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from .params import ConfigError

ARCHITECTURES = ("fast", "prior")


def input_channels(x: torch.Tensor) -> torch.Tensor:
    """(N, L) normalised spectra -> (N, 3, L): z-score, peak-to-peak in [-1, 1], position."""
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True).clamp_min(1e-6)
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    ptp = 2.0 * (x - lo) / (hi - lo).clamp_min(1e-12) - 1.0
    pos = torch.linspace(-1.0, 1.0, x.shape[-1], device=x.device, dtype=x.dtype).expand_as(x)
    return torch.stack([(x - mean) / std, ptp, pos], dim=1)


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
        width: base channel count of the fast network (stages use width, 1.5x, 2x).
        dropout: dropout before the heads.
        n_outputs: 3 (B0, dB, p), or 6 with a log-standard-deviation per parameter.
    """

    def __init__(
        self, arch: str = "fast", width: int = 32, dropout: float = 0.1, n_outputs: int = 3
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"model.arch: must be one of {', '.join(map(repr, ARCHITECTURES))} (got {arch!r})"
            )
        if width < 4:
            raise ConfigError(f"model.width: must be >= 4 (got {width})")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1) (got {dropout})")
        self.arch, self.n_outputs = arch, n_outputs
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
            self.features, feat = self._fast_features(width)
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
    def _fast_features(w: int) -> tuple[nn.Sequential, int]:
        w1, w2, w3 = w // 2, w, (3 * w) // 2
        w4 = 2 * w

        def down(c_in: int, c_out: int, k: int, s: int) -> list[nn.Module]:
            return [nn.Conv1d(c_in, c_out, k, stride=s, padding=k // 2 - (s // 2 if s % 2 == 0 else 0), bias=False),
                    nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]  # fmt: skip

        layers = [
            *down(3, w1, 8, 4),  # L/4
            *down(w1, w2, 4, 2),  # L/8
            ResBlock(w2, w2, 5, 1, True),
            ResBlock(w2, w2, 5, 2, True),
            *down(w2, w3, 4, 2),  # L/16
            ResBlock(w3, w3, 3, 2, True),
            ResBlock(w3, w3, 3, 4, True),
            *down(w3, w4, 4, 2),  # L/32
            ResBlock(w4, w4, 3, 4, True),
            ResBlock(w4, w4, 3, 8, True),
        ]
        return nn.Sequential(*layers), w4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(input_channels(x))
        z = self.trunk(self.pool(h).flatten(1))
        return torch.cat([head(z) for head in self.heads], dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
