"""Identity fine-tuning: train a LoRA on the MuseTalk UNet from one person's talking videos.

``musetalk finetune VIDEO... -o ACTOR.safetensors`` (or ``python -m training.finetune``):

1. preprocesses the videos into ``<work-dir>/data`` (faces, landmarks, audio
   features; resumable, see :mod:`training.preprocess`);
2. trains a LoRA adapter on the official UNet with the stage 1 losses (L1 +
   VGG19 perceptual, optionally the SyncNet loss), Selective Information
   Sampling as the paper defines it, ``training/configs/finetune.yaml``
   settings, checkpoints and validation images in ``<work-dir>/finetune/``;
3. copies the last LoRA to the output file.

Run the same command again to resume from the last checkpoint (``--restart``
starts over). Use the result with ``musetalk dub --lora ACTOR.safetensors``,
or merge it into a full UNet file with ``musetalk lora merge``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from musetalk_lib.run_files import write_atomically

from .config import TrainConfig, load_config
from .preprocess import PreprocessOptions, find_videos, preprocess, summarize

__all__ = ["main"]

CONFIGS = Path(__file__).resolve().parent / "configs"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="talking videos of one person, or folders")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the LoRA file to write (.safetensors)")
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("MUSETALK_MODELS_DIR", "models")),
                        help="official weights layout; also holds vgg/vgg19-dcbb9e9d.pth (default: %(default)s)")
    parser.add_argument("--version", choices=["v15", "v1"], default="v15", help="base UNet (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path,
                        help="preprocessed clips and checkpoints (default: <output without suffix>.finetune)")
    parser.add_argument("--restart", action="store_true", help="ignore earlier checkpoints in the work dir")
    training = parser.add_argument_group("training (defaults: training/configs/finetune.yaml)")
    training.add_argument("--config", type=Path, default=CONFIGS / "finetune.yaml", help="the run's YAML")
    training.add_argument("--steps", type=int, help="optimizer steps")
    training.add_argument("--batch-size", type=int, help="frames per step")
    training.add_argument("--rank", type=int, help="LoRA rank")
    training.add_argument("--lr", type=float, help="learning rate")
    training.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], help="bf16 needs a recent GPU")
    training.add_argument("--vgg19", type=Path, help="VGG19 weights (default: <models-dir>/vgg/vgg19-dcbb9e9d.pth)")
    training.add_argument("--sync", type=float, metavar="WEIGHT",
                          help="add the SyncNet loss with this weight (e.g. 0.05); needs --syncnet")
    training.add_argument("--syncnet", type=Path, help="SyncNet weights (LatentSync format) for --sync")
    training.add_argument("--syncnet-config", type=Path, default=CONFIGS / "syncnet.yaml",
                          help="its architecture (default: %(default)s)")
    training.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override any config value, e.g. --set data.sampling=pose (repeatable)")
    faces = parser.add_argument_group("preprocessing")
    faces.add_argument("--landmarks-dir", type=Path, help="folder with <video stem>.json landmark files")
    faces.add_argument("--detector", choices=["face-alignment", "dlib"],
                       help="face detector where no landmark JSON exists (default: face-alignment, or none with "
                            "--landmarks-dir)")
    faces.add_argument("--fps", type=float, default=25.0, help="resample frames to this rate (default: %(default)s)")
    faces.add_argument("--min-frames", type=int, help="shortest run of face frames kept as a clip")
    faces.add_argument("--max-frames", type=int, help="read at most this many frames per video")
    faces.add_argument("--device", default="auto", help="device for preprocessing (default: %(default)s)")
    return parser


def _config_overrides(args: argparse.Namespace, work_dir: Path) -> list[str]:
    from musetalk_lib.weights import find_model_files

    files = find_model_files(args.models_dir, args.version)
    vgg19 = args.vgg19 or args.models_dir / "vgg" / "vgg19-dcbb9e9d.pth"
    overrides = [f"output_dir={work_dir}", f"data.train_root={work_dir / 'data'}",
                 f"models.unet_config={files.unet_config}", f"models.init_unet={files.unet_weights}",
                 f"models.vae={files.vae_dir}", f"models.vgg19={vgg19}",
                 f"models.syncnet_config={args.syncnet_config}"]
    if args.syncnet:
        overrides.append(f"models.syncnet={args.syncnet}")
    if args.sync is not None:
        overrides.append(f"loss.sync={args.sync}")
    for flag, key in (("steps", "max_train_steps"), ("batch_size", "train_batch_size"), ("rank", "lora.rank"),
                      ("lr", "optim.lr"), ("mixed_precision", "mixed_precision")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return overrides + args.set


def _preprocess(args: argparse.Namespace, data_dir: Path, min_frames: int) -> None:
    from musetalk_lib.devices import resolve_device

    options = PreprocessOptions(output_dir=str(data_dir), landmarks_dir=str(args.landmarks_dir or "") or None,
                                detector=args.detector or (None if args.landmarks_dir else "face-alignment"),
                                models_dir=str(args.models_dir),
                                device=str(resolve_device(args.device)), fps=args.fps, min_frames=min_frames,
                                max_frames=args.max_frames)
    records = preprocess(args.videos, options, progress=True)
    if records:
        print(summarize(records, data_dir / "preprocess_log.jsonl"))
    if not any(data_dir.rglob("meta.json")):
        raise ValueError(f"No usable clip in {', '.join(map(str, args.videos))}: every video was skipped "
                         f"(see {data_dir / 'preprocess_log.jsonl'}).")


def run(args: argparse.Namespace) -> Path:
    """Preprocess, train and write the LoRA file; returns its path."""
    from .train import LipSyncTrainer

    output = args.output
    if output.suffix.lower() != ".safetensors":
        raise ValueError(f"{output}: the LoRA is written as a .safetensors file")
    videos = {path.resolve() for path in find_videos(args.videos)}
    if output.resolve() in videos:
        raise ValueError(f"{output} is one of the input videos")
    work_dir = args.work_dir or output.with_name(output.stem + ".finetune")
    config: TrainConfig = load_config(args.config, TrainConfig, _config_overrides(args, work_dir))
    if config.lora.rank < 1:
        raise ValueError("Identity fine-tuning trains a LoRA: lora.rank must be at least 1")
    min_frames = args.min_frames or config.data.min_clip_frames or 10 * config.data.n_sample_frames
    _preprocess(args, work_dir / "data", min_frames)
    run_dir = work_dir / config.exp_name
    if args.restart and run_dir.exists():
        shutil.rmtree(run_dir)
    if any(run_dir.glob("state-*.pt")):
        config.resume_from = "latest"
    trainer = LipSyncTrainer(config)
    step = trainer.train()
    write_atomically(output, lambda tmp: shutil.copyfile(trainer.weights_path(step), tmp))
    print(f"Wrote {output} (LoRA rank {config.lora.rank}, {step} steps); losses in {run_dir / 'logs'}, "
          f"validation images in {run_dir / 'validation'}.")
    return output


def main(argv: Sequence[str] | None = None, prog: str = "python -m training.finetune") -> None:
    run(build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    main()
