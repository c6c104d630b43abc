"""The LightningModule: loss on scaled targets, metrics in physical units, self-contained checkpoints."""

from __future__ import annotations

import io
import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, R2Score

from . import __version__
from .params import ConfigError, SimulationConfig, unit_label

# prediction (and the checkpoint format) live in the Lightning-free `predictor` module;
# re-exported here so `from dysonian_pl.module import TargetScaler` keeps working
from .predictor import (
    CHECKPOINT_FORMAT,
    PredictionMixin,
    TargetScaler,
    as_simulation_config,
    build_network,
    hyper_parameters,
)

LR_SCALINGS = ("linear", "sqrt", "none")


#: Fraction of a normal distribution within +-1 sigma; the calibration target.
ONE_SIGMA = 0.6826894921370859


def _stage_metrics(names: tuple[str, ...], prefix: str, uncertainty: bool) -> MetricCollection:
    metrics: dict[str, Any] = {}
    for name in names:
        metrics[f"{name}_R2"] = R2Score()
        metrics[f"{name}_RMSE"] = MeanSquaredError(squared=False)
        metrics[f"{name}_MAE"] = MeanAbsoluteError()
        if uncertainty:  # fraction of true values inside the predicted +-1 and +-2 sigma
            metrics[f"{name}_cover1"] = MeanMetric()
            metrics[f"{name}_cover2"] = MeanMetric()
    # float64 states (see DysonianRegressor._eval_step); module .float()/.half() leave them
    return MetricCollection(metrics, prefix=prefix).set_dtype(torch.float64)


class DysonianRegressor(PredictionMixin, L.LightningModule):
    """CNN regression of (B0, dB, p) from a normalised spectrum.

    Args:
        sim: the simulation config the model is trained for (linked from the data by
            the CLI); its field window, points, geometry and ranges travel in the checkpoint.
        arch: network architecture, ``"fast"`` or ``"prior"``.
        width: base width of the fast network.
        depth: residual blocks per stage of the fast network.
        dropout: dropout before the heads.
        loss_weights: per-target weights of the MSE on scaled targets (B0, dB, p).
        lr_scaling: how the configured learning rate scales with the number of training
            processes W (devices x nodes), since `data.batch_size` is per device and the
            global batch is W times larger: ``"linear"`` (lr x W, the default),
            ``"sqrt"`` (lr x sqrt W) or ``"none"``.
        uncertainty: also predict a standard deviation per parameter (Gaussian
            beta-NLL loss, beta = 0.5), calibrated after every validation epoch so that
            68.3 % of validation errors fall inside +-1 sigma.
        integral: fast network only: the spectrum's running integral (its absorption
            line) as a fourth input channel (`model.running_integral`).
        dispersion: fast network only: one more input channel, the Hilbert transform of
            the running integral (the dispersion quadrature; `model.dispersion_channel`).
        detrend: fast network only: the degree of the polynomial baseline projected out
            of the spectrum before the input channels are built
            (`model.project_out_baseline`): -1 none, 2 the simulator's offset, slope
            and curvature, which the network then cannot see at all.
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
        hp = hyper_parameters(sim, arch, width, dropout, loss_weights, lr_scaling, uncertainty, depth, integral, dispersion, detrend)  # fmt: skip
        self.save_hyperparameters(hp)
        self.uncertainty = uncertainty
        self.net = build_network(hp)
        # sigma calibration factors (persistent: they travel in the checkpoint)
        self.register_buffer("sigma_scale", torch.ones(3, dtype=torch.float64))
        self.scaler = TargetScaler(sim.ranges())
        self.register_buffer(
            "loss_w", torch.tensor(loss_weights, dtype=torch.float32), persistent=False
        )
        self.val_metrics = _stage_metrics(self.names, "val/", uncertainty)
        self.test_metrics = _stage_metrics(self.names, "test/", uncertainty)
        self._val_z: list[torch.Tensor] = []
        self._val_store: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.test_summary: dict[str, float] = {}

    # ---- prediction: `PredictionMixin` (forward, predict_physical, predict_with_sigma,
    # prediction_network, load_state_dict), shared with the Lightning-free `Predictor` ----

    # ---- steps -------------------------------------------------------------------------

    def _loss(self, out: torch.Tensor, y: torch.Tensor, nll: bool = True) -> torch.Tensor:
        """Weighted MSE on scaled targets, or the beta-NLL (beta 0.5) with uncertainty.

        beta-NLL (Seitzer et al., ICLR 2022) weights each term of the Gaussian NLL by
        sigma (detached), so hard samples do not starve the mean of gradient.
        """
        mean, log_sigma = self._split(out.float())
        err = (mean - self.scaler.scale(y)) ** 2
        if log_sigma is not None and nll:
            inv_var = torch.exp(-2.0 * log_sigma)
            nll = 0.5 * err * inv_var + log_sigma
            err = nll * log_sigma.detach().exp()
        return (err.mean(dim=0) * self.loss_w).sum() / self.loss_w.sum()

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def _eval_step(
        self, batch, metrics: MetricCollection, stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        out = self.net(x)
        z, log_sigma = self._split(out)
        # the evaluation loss is always the weighted MSE of the means: the beta-NLL's
        # value shrinks with sigma and is no measure of progress to monitor
        loss = self._loss(out, y, nll=False)
        # metrics in float64: R2 of B0 ~ 3350 G with a spread of tens of G loses about
        # three digits to cancellation in float32 states, and the loss depends on how the
        # samples were summed (per rank, per batch), so DDP and one process would disagree
        pred = self.scaler.unscale(z)
        y = y.double()
        for i, name in enumerate(self.names):
            for kind in ("R2", "RMSE", "MAE"):
                metrics[f"{name}_{kind}"].update(pred[:, i], y[:, i])
        if log_sigma is not None:
            raw = self._sigma_physical(log_sigma, calibrated=False)
            if stage == "val":
                self._val_z.append(((pred - y).abs() / raw).detach())
            sigma = raw * self.sigma_scale
            for i, name in enumerate(self.names):
                inside = (pred[:, i] - y[:, i]).abs()
                metrics[f"{name}_cover1"].update((inside <= sigma[:, i]).double())
                metrics[f"{name}_cover2"].update((inside <= 2 * sigma[:, i]).double())
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
        self._calibrate_sigma()
        self.log_dict(self.val_metrics.compute(), sync_dist=False)
        self.val_metrics.reset()
        if self._val_store and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            pred = torch.cat([p for p, _ in self._val_store]).numpy()
            true = torch.cat([t for _, t in self._val_store]).numpy()
            self._log_parity(pred, true)
        self._val_store.clear()

    def _calibrate_sigma(self) -> None:
        """Scale each parameter's sigma so 68.3 % of validation |errors| fall inside it.

        Uses the |error| / sigma ratios of the whole validation split (gathered over
        ranks); the coverage logged for this epoch used the previous factors, and the
        test split, never seen here, measures the calibration honestly.
        """
        if not self._val_z:
            return
        z = torch.cat(self._val_z)
        self._val_z.clear()
        if self.trainer.world_size > 1:
            z = self.all_gather(z).reshape(-1, z.shape[-1])
        if self.trainer.sanity_checking or len(z) < 20:
            return
        q = torch.quantile(z, ONE_SIGMA, dim=0)
        self.sigma_scale.copy_(torch.where(torch.isfinite(q) & (q > 0), q, torch.ones_like(q)))
        for i, name in enumerate(self.names):
            self.log(f"val/{name}_sigma_scale", float(self.sigma_scale[i]), rank_zero_only=True)

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
        """(N, 3) values, or (N, 6) values and standard deviations with uncertainty."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        value, sigma = self.predict_with_sigma(x)
        return torch.cat([value, sigma], dim=1) if self.uncertainty else value

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
    cover = f"{stage}/{names[0]}_cover1" in values
    head = "| parameter | R2 | RMSE | MAE |" + (
        " within 1 sigma | within 2 sigma |" if cover else ""
    )
    rows = [head, "| --- " * (6 if cover else 4) + "|"]
    for name in names:
        r2 = values.get(f"{stage}/{name}_R2", float("nan"))
        rmse = values.get(f"{stage}/{name}_RMSE", float("nan"))
        mae = values.get(f"{stage}/{name}_MAE", float("nan"))
        row = f"| {unit_label(name)} | {r2:.5f} | {rmse:.4g} | {mae:.4g} |"
        if cover:
            c1 = values.get(f"{stage}/{name}_cover1", float("nan"))
            c2 = values.get(f"{stage}/{name}_cover2", float("nan"))
            row += f" {c1:.3f} | {c2:.3f} |"
        rows.append(row)
    return "\n".join(rows)
