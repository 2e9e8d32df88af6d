"""Loggers beside TensorBoard (MLflow, Weights & Biases, both offline) and what every logger gets the same way.

Lightning already sends every scalar to each logger in `trainer.loggers`. Hyperparameters and images are not
scalars: TensorBoard takes them through its own API (the HParams tab, `add_image`), MLflow and W&B through
theirs. `log_hyperparams` and `log_images` are the one place that knows each logger's way, so a callback makes
one call and every configured logger gets the same parameters and the same pictures.

MLflow and wandb are optional extras (`pip install -e ".[loggers]"`). Nothing here imports them: Lightning's
logger classes import them only when a logger is built, and the config check (config.missing_logger_packages)
looks them up without importing, so a run that chose `logger=mlflow` without the package stops before the
corpus is read, with one line naming the install.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only


# ------------------------------------------------------------------------------------------- the loggers
def sqlite_file(tracking_uri: str | None) -> Path | None:
    """The database file of a `sqlite:///<path>` tracking URI (relative or, with a fourth slash, absolute)."""
    prefix = "sqlite:///"
    if not tracking_uri or not tracking_uri.startswith(prefix) or tracking_uri == prefix + ":memory:":
        return None
    return Path(tracking_uri[len(prefix) :])


class MLflowRun(MLFlowLogger):
    """Lightning's MLFlowLogger, named after the run folder (tag `run_dir`: where its checkpoints are).

    Nothing leaves the machine: MLflow 3 sends usage telemetry (config.mlflow-telemetry.io) unless
    MLFLOW_DISABLE_TELEMETRY is set, so it is set to true here, before mlflow is imported, unless you set it.
    A new SQLite store is created on first use (MLflow's schema migrations, seconds). Parallel jobs of a sweep
    would race on that ("duplicate column") and on creating the experiment, so both happen under a file lock
    beside the database; the database's folder is created too (SQLite does not).
    """

    def __init__(
        self,
        run_dir: str | None = None,
        experiment_name: str = "attention-lab",
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        tags = dict(tags or {})
        if run_dir is not None:
            kwargs.setdefault("run_name", Path(run_dir).name)
            tags.setdefault("run_dir", str(Path(run_dir).resolve()))
        database = sqlite_file(tracking_uri)
        lock: AbstractContextManager[Any] = nullcontext()
        if database is not None:
            from filelock import FileLock  # a dependency of torch

            database.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(f"{database}.lock")
        with lock:
            super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri, tags=tags, **kwargs)
            if rank_zero_only.rank == 0 and kwargs.get("run_id") is None:
                client = self._mlflow_client
                if client.get_experiment_by_name(experiment_name) is None:  # Lightning finds it by name later
                    client.create_experiment(experiment_name, artifact_location=kwargs.get("artifact_location"))


class WandbRun(WandbLogger):
    """Lightning's WandbLogger, named after the run folder, that ends its W&B run when the fit ends.

    Lightning leaves the run open until the process exits, and a new WandbLogger in the same process logs into
    the open run: the next job of an in-process sweep would otherwise write into the previous job's run.
    Offline, nothing leaves the machine: wandb's service would still report its own errors to W&B, so
    WANDB_ERROR_REPORTING is set to false here, unless you set it.
    """

    def __init__(self, run_dir: str | None = None, **kwargs: Any) -> None:
        if kwargs.get("offline"):
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        if run_dir is not None:
            kwargs.setdefault("name", Path(run_dir).name)
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning passes None; wandb 0.31 warns about any value
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


# ------------------------------------------------------------------------------------------ the adapters
def log_hyperparams(trainer: L.Trainer, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """The run's flat settings to every logger (rank 0 calls this once, at fit start).

    TensorBoard's HParams tab lists only the metrics registered with the parameters, so it also gets `metrics`
    (their first values). The others record every logged scalar anyway: their latest `hp/val_loss` and
    `val/loss` are the final validation loss."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)
        else:
            logger.log_hyperparams(params)


IMAGE_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)


def takes_images(trainer: L.Trainer) -> bool:
    """Whether any logger records images (a figure is rendered only for someone to see it)."""
    return any(isinstance(logger, IMAGE_LOGGERS) for logger in trainer.loggers)


def log_images(trainer: L.Trainer, images: Mapping[str, np.ndarray], step: int) -> None:
    """(H, W, 3) uint8 images by tag, to every logger that records images, at `step` (rank 0 calls this).

    TensorBoard: one image per tag and step. MLflow: `images/<tag>+step+<step>+...png` artifacts, shown by the UI
    as a step slider per tag. W&B: one `wandb.log` with every image, against `trainer/global_step`."""
    if not images:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for tag, image in images.items():
                logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            for tag, image in images.items():
                logger.experiment.log_image(logger.run_id, image, key=tag, step=step)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.log_metrics({tag: wandb.Image(image) for tag, image in images.items()}, step)
