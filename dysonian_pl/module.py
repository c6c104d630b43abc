"""The LightningModule: loss on scaled targets, metrics in physical units, self-contained checkpoints."""

from __future__ import annotations

import io
import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

from . import __version__
from .model import DysonNet
from .params import ConfigError, SimulationConfig, unit_label

LR_SCALINGS = ("linear", "sqrt", "none")

#: Bumped when a checkpoint written by this version cannot be read by older code.
CHECKPOINT_FORMAT = 1


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


def _stage_metrics(names: tuple[str, ...], prefix: str) -> MetricCollection:
    metrics: dict[str, Any] = {}
    for name in names:
        metrics[f"{name}_R2"] = R2Score()
        metrics[f"{name}_RMSE"] = MeanSquaredError(squared=False)
        metrics[f"{name}_MAE"] = MeanAbsoluteError()
    # float64 states (see DysonianRegressor._eval_step); module .float()/.half() leave them
    return MetricCollection(metrics, prefix=prefix).set_dtype(torch.float64)


class DysonianRegressor(L.LightningModule):
    """CNN regression of (B0, dB, p) from a normalised spectrum.

    Args:
        sim: the simulation config the model is trained for (linked from the data by
            the CLI); its field window, points, geometry and ranges travel in the checkpoint.
        arch: network architecture, ``"fast"`` or ``"prior"``.
        width: base width of the fast network.
        dropout: dropout before the heads.
        loss_weights: per-target weights of the MSE on scaled targets (B0, dB, p).
        lr_scaling: how the configured learning rate scales with the number of training
            processes W (devices x nodes), since `data.batch_size` is per device and the
            global batch is W times larger: ``"linear"`` (lr x W, the default),
            ``"sqrt"`` (lr x sqrt W) or ``"none"``.
    """

    def __init__(
        self,
        sim: SimulationConfig | dict | None = None,
        arch: str = "fast",
        width: int = 32,
        dropout: float = 0.1,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 2.0),
        lr_scaling: str = "linear",
    ) -> None:
        super().__init__()
        if sim is None:
            sim = SimulationConfig()
        if isinstance(sim, dict):
            sim = SimulationConfig.from_dict(sim)
        if len(loss_weights) != 3 or any(not (w >= 0 and math.isfinite(w)) for w in loss_weights):
            raise ConfigError(
                f"model.loss_weights: need three finite weights >= 0 (got {list(loss_weights)})"
            )
        if lr_scaling not in LR_SCALINGS:
            raise ConfigError(
                f"model.lr_scaling: must be one of {', '.join(LR_SCALINGS)} (got {lr_scaling!r})"
            )
        self.lr_scaling = lr_scaling
        self.sim = sim
        self.names = sim.target_names
        # plain types only, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "sim": sim.to_dict(),
                "arch": arch,
                "width": width,
                "dropout": dropout,
                "loss_weights": list(loss_weights),
                "lr_scaling": lr_scaling,
            }
        )
        self.net = DysonNet(arch=arch, width=width, dropout=dropout, n_outputs=3)
        self.scaler = TargetScaler(sim.ranges())
        self.register_buffer(
            "loss_w", torch.tensor(loss_weights, dtype=torch.float32), persistent=False
        )
        self.val_metrics = _stage_metrics(self.names, "val/")
        self.test_metrics = _stage_metrics(self.names, "test/")
        self._val_store: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.test_summary: dict[str, float] = {}

    # ---- prediction --------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised spectra (N, n_points) -> scaled targets (N, 3)."""
        return self.net(x)

    @torch.no_grad()
    def predict_physical(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised spectra -> (B0, dB, p) in physical units, float64."""
        return self.scaler.unscale(self(x.to(self.device, torch.float32)))

    # ---- steps -------------------------------------------------------------------------

    def _loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        err = (z.float() - self.scaler.scale(y)) ** 2
        return (err.mean(dim=0) * self.loss_w).sum() / self.loss_w.sum()

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def _eval_step(
        self, batch, metrics: MetricCollection, stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        z = self(x)
        loss = self._loss(z, y)
        # metrics in float64: R2 of B0 ~ 3350 G with a spread of tens of G loses about
        # three digits to cancellation in float32 states, and the loss depends on how the
        # samples were summed (per rank, per batch), so DDP and one process would disagree
        pred = self.scaler.unscale(z)
        y = y.double()
        for i, name in enumerate(self.names):
            for kind in ("R2", "RMSE", "MAE"):
                metrics[f"{name}_{kind}"].update(pred[:, i], y[:, i])
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=len(x),
        )
        return pred, y

    def validation_step(self, batch, batch_idx: int) -> None:
        pred, y = self._eval_step(batch, self.val_metrics, "val")
        if len(self._val_store) < 64:
            self._val_store.append((pred.cpu(), y.cpu()))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), sync_dist=False)
        self.val_metrics.reset()
        if self._val_store and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            pred = torch.cat([p for p, _ in self._val_store]).numpy()
            true = torch.cat([t for _, t in self._val_store]).numpy()
            self._log_parity(pred, true)
        self._val_store.clear()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        values = {k: float(v) for k, v in self.test_metrics.compute().items()}
        self.test_metrics.reset()
        self.log_dict(values, sync_dist=False)
        self.test_summary = values
        if self.trainer.is_global_zero:
            print(format_metrics_table(values, self.names))

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.scaler.unscale(self(x))

    # ---- optimisation: optimizer and scheduler come from YAML through LightningCLI ----

    def configure_optimizers(self):
        # used when no optimizer is configured (Python use); the CLI overrides it
        opt = torch.optim.AdamW(self.parameters(), lr=2e-3, weight_decay=1e-4)
        self.scale_learning_rate(opt)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}

    def scale_learning_rate(self, optimizer: torch.optim.Optimizer) -> float:
        """Scale the optimizer's lr for the number of training processes (once per optimizer).

        A resumed run restores the already-scaled lr from its checkpoint afterwards.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        factor = {"linear": float(world), "sqrt": math.sqrt(world), "none": 1.0}[self.lr_scaling]
        if factor != 1.0 and not getattr(optimizer, "_dysonian_lr_scaled", False):
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
            optimizer._dysonian_lr_scaled = True
            if self.trainer.is_global_zero:
                print(
                    f"dysonian_pl: {world} training processes; lr scaled x{factor:g} ({self.lr_scaling})"
                )
        return factor

    # ---- checkpoints -------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dysonian_pl"] = {
            "format": CHECKPOINT_FORMAT,
            "package_version": __version__,
            "sim": self.sim.to_dict(),
            "target_names": list(self.names),
            "ranges": {k: list(v) for k, v in self.sim.ranges().items()},
            "field_axis": [self.sim.window[0], self.sim.window[1], self.sim.n_points],
            "geometry": self.sim.geometry,
            "preprocessing": "polarity rule, then divide by peak-to-peak (dysonian_pl.preprocess.normalise)",
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("dysonian_pl")
        if meta is None:
            raise ConfigError("checkpoint: not a dysonian_pl checkpoint (no 'dysonian_pl' section)")
        if meta.get("format", 0) > CHECKPOINT_FORMAT:
            raise ConfigError(
                f"checkpoint: format {meta.get('format')} is newer than this dysonian_pl "
                f"({__version__}, reads format <= {CHECKPOINT_FORMAT}); upgrade dysonian_pl"
            )
        self._check_checkpoint_sim(meta.get("sim"))

    def _check_checkpoint_sim(self, stored: dict | None) -> None:
        """The checkpoint's field axis, geometry and target ranges must be this run's.

        The network reads spectra only on the axis it was trained on and unscales its
        outputs with the training ranges, so a different window, point count, geometry
        or range would give wrong numbers without any error.
        """
        if not isinstance(stored, dict):
            return
        mine = self.sim.to_dict()
        keys = ["window", "n_points", "geometry", *self.names]
        for key in dict.fromkeys(keys):
            theirs, ours = stored.get(key), mine.get(key)
            if isinstance(theirs, (list, tuple)):
                theirs = [float(v) for v in theirs]
                ours = [float(v) for v in ours] if isinstance(ours, (list, tuple)) else ours
            if theirs is not None and theirs != ours:
                raise ConfigError(
                    f"data.sim.{key}: the checkpoint was trained with {theirs} but this run's "
                    f"data config has {ours}; use the checkpoint's value (a model reads only "
                    "the field axis, geometry and ranges it was trained for)"
                )

    # ---- TensorBoard -------------------------------------------------------------------

    def _log_parity(self, pred: np.ndarray, true: np.ndarray) -> None:
        logger = self.logger
        exp = getattr(logger, "experiment", None)
        if exp is None or not hasattr(exp, "add_figure"):
            return
        fig = parity_figure(pred, true, self.names)
        exp.add_figure("val/parity", fig, global_step=self.global_step)


def parity_figure(pred: np.ndarray, true: np.ndarray, names: tuple[str, ...]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6))
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.plot(true[:, i], pred[:, i], ".", ms=2, alpha=0.5)
        lo, hi = float(true[:, i].min()), float(true[:, i].max())
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel(f"true {unit_label(name)}")
        ax.set_ylabel(f"predicted {unit_label(name)}")
    fig.tight_layout()
    buf = io.BytesIO()  # force the draw now, so a broken figure fails here
    fig.savefig(buf, format="png")
    return fig


def format_metrics_table(
    values: dict[str, float], names: tuple[str, ...], stage: str = "test"
) -> str:
    rows = ["| parameter | R2 | RMSE | MAE |", "| --- | --- | --- | --- |"]
    for name in names:
        r2 = values.get(f"{stage}/{name}_R2", float("nan"))
        rmse = values.get(f"{stage}/{name}_RMSE", float("nan"))
        mae = values.get(f"{stage}/{name}_MAE", float("nan"))
        rows.append(f"| {unit_label(name)} | {r2:.5f} | {rmse:.4g} | {mae:.4g} |")
    return "\n".join(rows)
