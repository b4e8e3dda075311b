"""``fxswap.Distiller`` inside a PyTorch Lightning ``LightningModule``.

The Distiller keeps its frozen teacher outside the module tree, so Lightning
neither optimises it nor writes it into checkpoints: a checkpoint holds the
student (and any connectors) only, and stays student-sized.

    pip install lightning
    python examples/lightning_module.py --tiny
"""
from __future__ import annotations

import sys
import tempfile

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import fxswap


class DistillModule(L.LightningModule):
    """Training step = the Distiller's loss; validation = the student's accuracy."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, lr: float = 0.1):
        super().__init__()
        self.distiller = fxswap.Distiller(teacher, student, losses={"at": 1000.0, "kd": 0.9})
        self.lr = lr

    @property
    def student(self) -> torch.nn.Module:
        return self.distiller.student

    def training_step(self, batch, batch_idx):
        loss, logs = self.distiller(*batch)
        self.log_dict({f"train/{k}": v for k, v in logs.items()})
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.student(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.distiller.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)


def main(tiny: bool = False) -> dict:
    torch.manual_seed(0)
    teacher = fxswap.models.wrn(10, 1) if tiny else fxswap.models.wrn(40, 2)  # load your trained teacher here
    student = fxswap.cheapen(teacher, "B(2)", reinit=True)
    module = DistillModule(teacher, student)
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))  # swap in your DataModule
    out = tempfile.mkdtemp() if tiny else "runs/lightning"
    trainer = L.Trainer(max_epochs=1 if tiny else 200, accelerator="cpu" if tiny else "auto", default_root_dir=out,
                        logger=False, enable_progress_bar=not tiny, enable_model_summary=not tiny,
                        limit_train_batches=2 if tiny else None, limit_val_batches=1 if tiny else None)
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    path = f"{out}/last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    print(f"checkpoint {path}: {len(state)} tensors, all of the student (no teacher inside)")
    return {"checkpoint": path, "state_keys": sorted(state), "student": student}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
