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
