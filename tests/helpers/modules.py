"""A tiny LightningModule for tests that train for real (CPU, a few steps).

``Detector`` logs ``val/hmean`` from ``schedule`` by epoch (by default the top 2 of 6 epochs are
epochs 2 and 4, the best is epoch 4) and saves its arguments as hyperparameters, as a model
whose checkpoints name an architecture and an encoder does. Needs torch and lightning.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

SCHEDULE = (0.2, 0.5, 0.9, 0.4, 0.95, 0.3)


class Detector(pl.LightningModule):
    def __init__(
        self,
        architecture_name: str | None = "dbnet",
        encoder: Any = "resnet18",
        schedule: tuple[float, ...] = SCHEDULE,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log(
            "val/hmean", self.hparams.schedule[self.current_epoch % len(self.hparams.schedule)]
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tiny_trainer(
    root: Any, *, max_epochs: int = 3, callbacks: Any = (), **overrides: Any
) -> pl.Trainer:
    """A ``Trainer`` for the tests that train for real: the CPU, two training batches and one
    validation batch per epoch, no sanity check, no logger, nothing printed; ``overrides``
    replace any of these."""
    options: dict[str, Any] = dict(
        max_epochs=max_epochs,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    options.update(overrides)
    return pl.Trainer(callbacks=list(callbacks), **options)
