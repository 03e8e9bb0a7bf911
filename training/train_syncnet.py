"""Train a SyncNet for the stage 2 sync loss (and for LSE metrics) on preprocessed clips.

Each batch holds in-sync pairs and pairs whose audio is shifted by at least
``data.min_offset`` frames, all from one identity, as the MuseTalk paper
recommends: the network cannot separate positives from negatives by who is
speaking and has to look at the lips. The loss is binary cross-entropy on the
cosine similarity of the two embeddings clamped to [0, 1].

Checkpoints ``syncnet-<step>.pth`` hold ``{"state_dict": ...}`` like
LatentSync's ``latentsync_syncnet.pt``; point ``models.syncnet`` of a stage 2
config at one (with ``models.syncnet_config`` at this run's YAML).

Run ``python -m training.train_syncnet --config training/configs/syncnet.yaml``
(or under ``accelerate launch``). Train on 25 fps clips for 16 frames <-> 52 mel steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from .config import SyncNetTrainConfig, config_from_command_line
from .data import SyncNetDataset
from .loop import TrainingLoop
from .syncnet import load_syncnet, sync_loss

__all__ = ["SyncNetTrainer", "main"]


class SyncNetTrainer(TrainingLoop):
    """SyncNet training with identity-pure batches; see the module docstring."""

    weights_prefix = "syncnet"

    def __init__(self, config: SyncNetTrainConfig, accelerator: Accelerator | None = None):
        super().__init__(config, accelerator)
        set_seed(config.seed)
        self.model = load_syncnet(config.model, config.init_weights).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        data = config.data
        frames = self.model.num_frames
        samples = (config.max_train_steps * config.gradient_accumulation_steps * config.batch_size
                   * self.accelerator.num_processes)
        dataset = SyncNetDataset(data.train_root, frames, config.batch_size, config.seed, samples,
                                 data.min_offset, data.min_face_size)
        self.dataloader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, drop_last=True,
                                     num_workers=data.num_workers, persistent_workers=data.num_workers > 0,
                                     pin_memory=self.device.type == "cuda")
        self.val_dataset = SyncNetDataset(data.val_root or data.train_root, frames, config.batch_size,
                                          config.seed + 1, config.num_validation_batches * config.batch_size,
                                          data.min_offset, data.min_face_size)
        self.model, self.optimizer, self.dataloader = self.accelerator.prepare(
            self.model, self.optimizer, self.dataloader)

    @staticmethod
    def _scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        visual, audio = model(batch["frames"], batch["mel"])
        return sync_loss(visual, audio, batch["label"]), F.cosine_similarity(visual, audio, dim=1)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            with accelerator.autocast():
                loss, similarity = self._scores(self.model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        accuracy = ((similarity > 0.5).float() == batch["label"]).float().mean()
        return {"loss": float(loss.detach()), "accuracy": float(accuracy)}

    def weights_state(self) -> dict:
        return {"state_dict": self.accelerator.get_state_dict(self.model)}

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss and accuracy (similarity > 0.5 means in sync) on the validation pairs."""
        if not self.accelerator.is_main_process:
            return {}
        model = self.accelerator.unwrap_model(self.model).eval()
        losses, correct, count = [], 0.0, 0
        size = self.config.batch_size
        for start in range(0, len(self.val_dataset), size):
            items = [self.val_dataset[i] for i in range(start, min(start + size, len(self.val_dataset)))]
            batch = {key: torch.stack([item[key] for item in items]).to(self.device) for key in items[0]}
            loss, similarity = self._scores(model, batch)
            losses.append(loss.item())
            correct += float(((similarity > 0.5).float() == batch["label"]).sum())
            count += len(items)
        model.train()
        return {"val_loss": sum(losses) / len(losses), "val_accuracy": correct / count}


def main(argv: Sequence[str] | None = None) -> None:
    config = config_from_command_line(argv, SyncNetTrainConfig, "python -m training.train_syncnet", __doc__,
                                      "training/configs/syncnet.yaml")
    SyncNetTrainer(config).train()


if __name__ == "__main__":
    main()
