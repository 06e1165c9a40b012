"""Train a tiny classifier on synthetic data with ckpt-index's Lightning callbacks (CPU, seconds).

The callbacks come from the Hydra snippets shipped in the package (``conf/train.yaml`` enables
them with one defaults entry). Every checkpoint gets a ``.metadata.yaml`` sidecar and a row in the
index (``$CKPT_INDEX_DB``, else ``./ckpt_index.db``), so afterwards::

    ckpt-index query --best-by hmean

Example::

    python examples/train.py trainer.max_epochs=8 experiment_tag=slower model.lr=0.001
"""

from __future__ import annotations

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyNet(pl.LightningModule):
    """encoder (MLP) -> decoder (linear) -> head (one logit); logs precision, recall, hmean."""

    def __init__(
        self,
        architecture_name: str,
        encoder: dict,
        decoder: dict,
        head: dict,
        loss: dict,
        features: int,
        lr: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # the metadata callback reads the model fields from these
        width = decoder["in_channels"][0]
        self.encoder = nn.Sequential(nn.Linear(features, width), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(width, decoder["output_channels"]), nn.ReLU())
        self.head = nn.Linear(head["in_channels"], 1)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x))).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        predicted = (logits > 0).float()
        tp = (predicted * y).sum()
        precision = tp / predicted.sum().clamp(min=1)
        recall = tp / y.sum().clamp(min=1)
        hmean = 2 * precision * recall / (precision + recall).clamp(min=1e-8)
        self.log_dict(
            {
                "val/loss": self.loss_fn(logits, y),
                "val/precision": precision,
                "val/recall": recall,
                "val/hmean": hmean,
            }
        )

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def synthetic_data(cfg: DictConfig, features: int) -> tuple[DataLoader, DataLoader]:
    """Two noisy classes split by a random hyperplane."""
    generator = torch.Generator().manual_seed(cfg.seed)
    direction = torch.randn(features, generator=generator)

    def make(n: int, shuffle: bool) -> DataLoader:
        x = torch.randn(n, features, generator=generator)
        y = ((x @ direction + cfg.data.noise * torch.randn(n, generator=generator)) > 0).float()
        return DataLoader(TensorDataset(x, y), batch_size=cfg.data.batch_size, shuffle=shuffle)

    return make(cfg.data.train_size, True), make(cfg.data.val_size, False)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    pl.seed_everything(cfg.seed, verbose=False)
    model = TinyNet(**OmegaConf.to_container(cfg.model, resolve=True))
    train, val = synthetic_data(cfg, cfg.model.features)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if "_target_" in c]
    trainer = pl.Trainer(**cfg.trainer, callbacks=callbacks)
    trainer.fit(model, train, val)
    best = trainer.checkpoint_callback
    score = float(best.best_model_score)
    print(f"best checkpoint: {best.best_model_path} ({best.monitor}={score:.4f})")


if __name__ == "__main__":
    main()
