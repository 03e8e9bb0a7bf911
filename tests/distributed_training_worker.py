"""Run by test_training_distributed.py under `accelerate launch` with several CPU processes.

Each rank writes ``rank<N>.json`` (world size, distributed type, its first batches) to OUT_DIR, then the ranks train together:
an uninterrupted run ``full`` and a run ``resumed`` stopped at step 2 and resumed to the end.
Usage: distributed_training_worker.py CONFIG OUT_DIR [KEY=VALUE ...]
"""

import json
import sys
from pathlib import Path

from training.config import TrainConfig, load_config
from training.train import LipSyncTrainer


def main(config_path: str, out_dir: str, *overrides: str) -> None:
    def trainer(*extra: str) -> LipSyncTrainer:
        return LipSyncTrainer(load_config(config_path, TrainConfig, [*overrides, *extra]))

    full = trainer("exp_name=full")
    accelerator = full.accelerator
    batches = [{key: batch[key].tolist() for key in ("clip", "frames", "references")}
               for batch, _ in zip(full.dataloader, range(4))]
    report = {"world_size": accelerator.num_processes, "rank": accelerator.process_index,
              "distributed_type": accelerator.distributed_type.value, "batches": batches}
    Path(out_dir, f"rank{accelerator.process_index}.json").write_text(json.dumps(report))
    full.train()
    trainer("exp_name=resumed", "max_train_steps=2").train()
    trainer("exp_name=resumed", "resume_from=latest").train()


if __name__ == "__main__":
    main(*sys.argv[1:])
