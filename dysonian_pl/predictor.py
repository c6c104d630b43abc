"""Prediction without Lightning: the trained network, its target scaling and sigma calibration.

`Predictor` is the model `infer.load_model` returns. It is built from a checkpoint's
plain sections (``hyper_parameters``, ``state_dict`` and ``dysonian_pl``, as
`module.DysonianRegressor` writes them) and imports neither Lightning nor
torchmetrics, so the command-line tools start in a fraction of the time the training
module needs. The prediction code itself (`PredictionMixin`: output split, batch-norm
folded network, unscaling, sigma calibration) is shared with `DysonianRegressor`, so
both give bit-identical numbers for the same checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import CHECKPOINT_FORMAT
from .model import DysonNet, fuse_for_inference
from .params import SimulationConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "AttributeDict",
    "PredictionMixin",
    "Predictor",
    "TargetScaler",
    "as_simulation_config",
    "build_network",
    "hyper_parameters",
]


class TargetScaler(nn.Module):
    """Min-max scaling of (B0, dB, p) to [0, 1] from the simulation ranges."""

    def __init__(self, ranges: dict[str, tuple[float, float]]) -> None:
        super().__init__()
        lo = torch.tensor([r[0] for r in ranges.values()], dtype=torch.float64)
        hi = torch.tensor([r[1] for r in ranges.values()], dtype=torch.float64)
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("span", span, persistent=False)

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        return ((y.double() - self.lo) / self.span).float()

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z.double() * self.span + self.lo


class AttributeDict(dict):
    """A dict whose keys read as attributes too (``hparams.width``), like Lightning's."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def as_simulation_config(sim: SimulationConfig | dict | None) -> SimulationConfig:
    """`sim` as a `SimulationConfig` (None: the default one; a dict: `from_dict`)."""
    if sim is None:
        return SimulationConfig()
    if isinstance(sim, dict):
        return SimulationConfig.from_dict(sim)
    return sim


def hyper_parameters(
    sim: SimulationConfig,
    arch: str,
    width: int,
    dropout: float,
    loss_weights,
    lr_scaling: str,
    uncertainty: bool,
    depth: int,
    integral: bool = False,
    dispersion: bool = False,
    detrend: int = -1,
) -> dict:
    """The checkpoint's ``hyper_parameters``: plain types only, so checkpoints load with
    ``torch.load(weights_only=True)``."""
    return {
        "sim": sim.to_dict(),
        "arch": arch,
        "width": width,
        "dropout": dropout,
        "loss_weights": list(loss_weights),
        "lr_scaling": lr_scaling,
        "uncertainty": uncertainty,
        "depth": depth,
        "integral": integral,
        "dispersion": dispersion,
        "detrend": detrend,
    }


def build_network(hp: dict) -> DysonNet:
    """The network of a model's `hyper_parameters`: three outputs, or six with a
    log-sigma per parameter."""
    return DysonNet(
        arch=hp["arch"],
        width=hp["width"],
        dropout=hp["dropout"],
        n_outputs=6 if hp["uncertainty"] else 3,
        depth=hp["depth"],
        integral=hp["integral"],
        dispersion=hp["dispersion"],
        detrend=hp.get("detrend", -1),  # checkpoints written before the option: none
    )


class PredictionMixin:
    """Prediction in physical units, shared by `Predictor` and `module.DysonianRegressor`.

    The class using it is an `nn.Module` with ``net`` (a `DysonNet`), ``scaler`` (a
    `TargetScaler`), a float64 buffer ``sigma_scale`` (per-parameter calibration
    factors), ``uncertainty`` and a ``device``.
    """

    net: DysonNet
    scaler: TargetScaler
    sigma_scale: torch.Tensor
    uncertainty: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised spectra (N, n_points) -> scaled targets (N, 3)."""
        return self.net(x)[:, :3]

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Network output (or means alone) -> (scaled means, log sigma in scaled units or None)."""
        if not self.uncertainty or out.shape[-1] == 3:
            return out, None
        return out[:, :3], out[:, 3:].clamp(-12.0, 3.0)

    def prediction_network(self) -> nn.Module:
        """The network for prediction: in eval mode, a copy with batch norm folded into the
        convolutions, rebuilt after any `train()`/`eval()` switch, `load_state_dict`, or
        in-place update of a weight or statistic (tensor version counters)."""
        if self.training:
            return self.net
        tensors = [*self.net.parameters(), *self.net.buffers()]
        key = tuple((t.data_ptr(), t._version, t.device) for t in tensors)
        if getattr(self, "_fused_key", None) != key:
            self._fused = [fuse_for_inference(self.net)]  # a list: not a registered submodule
            self._fused_key = key
        return self._fused[0]

    def train(self, mode: bool = True):
        # only a real switch drops the fused copy: `predict_arrays` calls eval() on every
        # call, and re-fusing costs ~18 ms, 7x the forward pass of one spectrum
        if bool(mode) != self.training:
            self.__dict__.pop("_fused_key", None)
        return super().train(mode)

    @torch.no_grad()
    def predict_physical(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised spectra -> (B0, dB, p) in physical units, float64."""
        out = self.prediction_network()(x.to(self.device, torch.float32))[:, :3]
        return self.scaler.unscale(out)

    @torch.no_grad()
    def predict_with_sigma(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised spectra -> (values, calibrated standard deviations), physical units.

        The standard deviations are NaN for a model trained without ``uncertainty``.
        """
        mean, log_sigma = self._split(self.prediction_network()(x.to(self.device, torch.float32)))
        value = self.scaler.unscale(mean)
        if log_sigma is None:
            return value, torch.full_like(value, float("nan"))
        return value, self._sigma_physical(log_sigma)

    def _sigma_physical(self, log_sigma: torch.Tensor, calibrated: bool = True) -> torch.Tensor:
        sigma = log_sigma.double().exp() * self.scaler.span
        return sigma * self.sigma_scale if calibrated else sigma

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Checkpoints written before the sigma calibration buffer existed load with factors 1."""
        if "sigma_scale" not in state_dict:
            state_dict = {**state_dict, "sigma_scale": torch.ones(3, dtype=torch.float64)}
        self.__dict__.pop("_fused_key", None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class Predictor(PredictionMixin, nn.Module):
    """A trained model for prediction only: `DysonianRegressor`'s network, scaling and
    calibration without its training machinery (no Lightning, no metrics).

    The arguments are a checkpoint's ``hyper_parameters`` (`DysonianRegressor`'s); the
    training-only ones (``loss_weights``, ``lr_scaling``) are kept in `hparams` and
    otherwise unused. `from_checkpoint` builds one from a checkpoint dictionary.
    """

    def __init__(
        self,
        sim: SimulationConfig | dict | None = None,
        arch: str = "fast",
        width: int = 24,
        dropout: float = 0.1,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 2.0),
        lr_scaling: str = "linear",
        uncertainty: bool = False,
        depth: int = 1,
        integral: bool = False,
        dispersion: bool = False,
        detrend: int = -1,
    ) -> None:
        super().__init__()
        sim = as_simulation_config(sim)
        self.sim = sim
        self.names = sim.target_names
        hp = hyper_parameters(sim, arch, width, dropout, loss_weights, lr_scaling, uncertainty, depth, integral, dispersion, detrend)  # fmt: skip
        self.hparams = AttributeDict(hp)
        self.uncertainty = uncertainty
        self.net = build_network(hp)
        # sigma calibration factors (persistent: they travel in the checkpoint)
        self.register_buffer("sigma_scale", torch.ones(3, dtype=torch.float64))
        self.scaler = TargetScaler(sim.ranges())
        self.checkpoint_meta: dict = {}

    @property
    def device(self) -> torch.device:
        return self.sigma_scale.device

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> Predictor:
        """A predictor in eval mode, without gradients, from a checkpoint dictionary.

        `checkpoint_meta` is a copy of the checkpoint's ``dysonian_pl`` section.
        """
        model = cls(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        model.requires_grad_(False)
        model.checkpoint_meta = dict(ckpt.get("dysonian_pl") or {})
        return model
