"""Train the MuseTalk UNet: stage 1 (L1 + VGG) and stage 2 (adds GANs and the sync loss).

One loop serves both stages; the config decides which losses (and so which
networks) take part. Per micro-batch:

1. target frames with their lower half set to -1 and the reference frames go
   through the frozen VAE encoder (posterior mode, scaled); the UNet gets
   ``[masked, reference]`` latents, timestep 0 and the audio tokens (plus the
   positional encoding unless switched off);
2. the predicted latents are decoded by the frozen VAE with gradients, and
   every loss is computed on the full 256x256 image;
3. in stage 2 the image and mouth discriminators are then updated on real vs
   generated (detached) images.

Run it with ``python -m training.train --config training/configs/stage1.yaml``
on one device, or under ``accelerate launch`` on many GPUs and machines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader

from musetalk_lib.checkpoint import load_state_dict
from musetalk_lib.crop import FACE_SIZE
from musetalk_lib.lora import ADAPTER_NAME, add_lora, lora_state_dict, read_lora, save_lora
from musetalk_lib.unet import build_unet, load_unet_config, positional_encoding
from musetalk_lib.vae import load_vae

from . import runs
from .config import SyncNetConfig, TrainConfig, config_from_command_line, config_from_dict
from .data import LipSyncDataset
from .discriminator import MultiScaleDiscriminator
from .loop import TrainingLoop
from .losses import crop_boxes, feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
from .optim import build_optimizer, cosine_annealing, restore_scheduler
from .syncnet import SyncNet, load_syncnet, sync_loss
from .vgg import PerceptualLoss, load_vgg19

__all__ = ["LipSyncTrainer", "load_syncnet_config", "main", "mask_lower_half"]

logger = logging.getLogger(__name__)

# Frozen networks (the VAE, a LoRA's base UNet) are stored in the mixed-precision dtype: half their memory.
FROZEN_WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mask_lower_half(images: torch.Tensor) -> torch.Tensor:
    """A copy of ``[N, 3, H, W]`` images in [-1, 1] with rows ``H/2..`` set to -1 (black), as inference masks."""
    masked = images.clone()
    masked[:, :, images.shape[-2] // 2:, :] = -1.0
    return masked


def load_syncnet_config(path: str) -> SyncNetConfig:
    """The SyncNet architecture: the ``model`` section of a SyncNet training YAML."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return config_from_dict(SyncNetConfig, data.get("model", {}), where=f"{path}:model")


def _require(path: str | None, what: str, key: str) -> str:
    if not path:
        raise ValueError(f"{what} is needed by this config but {key} is not set")
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} not found: {path} (set {key})")
    return path


class LipSyncTrainer(TrainingLoop):
    """Builds the networks, data and optimizers of a run from its :class:`TrainConfig` and trains them.

    Checkpoints are ``unet-<step>.pth``: the UNet's plain state dict, which
    :func:`musetalk_lib.unet.load_unet` and the official code load. With
    ``lora.rank > 0`` only a LoRA adapter on the UNet trains and checkpoints are
    ``lora-<step>.safetensors`` LoRA files (:mod:`musetalk_lib.lora`).
    """

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None):
        super().__init__(config, accelerator)
        if self.accelerator.distributed_type == DistributedType.FSDP:
            if config.lora.rank > 0:
                raise ValueError("LoRA runs are small: train them with DDP (accelerate_ddp.yaml), not FSDP")
            if config.save_optimizer_state:
                raise ValueError("Under FSDP each GPU holds a shard of the optimizer states, which checkpoints do "
                                 "not gather: set save_optimizer_state: false (resume then restarts the moments)")
            if config.validation_steps:
                raise ValueError("Validation images run the UNet on the main process alone, which FSDP's sharded "
                                 "UNet cannot: set validation_steps: 0 (validate a saved unet-<step>.pth instead)")
        if config.lora.rank > 0:
            self.weights_prefix, self.weights_suffix = "lora", ".safetensors"
        else:
            self.weights_prefix = "unet"
        set_seed(config.seed)
        self._build_models()
        self._build_optimizers()
        self._build_data()
        self._prepare()

    # ----------------------------------------------------------------------------------------- building
    def _build_models(self) -> None:
        config, device = self.config, self.device
        unet = build_unet(load_unet_config(config.models.unet_config))
        if config.models.init_unet:
            unet.load_state_dict(load_state_dict(_require(config.models.init_unet, "The initial UNet",
                                                          "models.init_unet")), strict=True)
        self.lora_config = None
        if config.lora.rank > 0:
            self.lora_config = add_lora(unet, config.lora.rank, config.lora.alpha, config.lora.target_modules,
                                        config.lora.dropout)
        frozen_dtype = FROZEN_WEIGHT_DTYPES.get(config.mixed_precision, torch.float32)
        if self.lora_config is not None:  # the frozen base weights in the mixed-precision dtype, the LoRA in fp32
            for parameter in unet.parameters():
                if not parameter.requires_grad:
                    parameter.data = parameter.data.to(frozen_dtype)
        if config.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.unet: UNet2DConditionModel = unet.train()

        face_vae = load_vae(config.models.vae, device=device, dtype=frozen_dtype)
        self.vae = face_vae.vae.requires_grad_(False).eval()
        if config.model.vae_gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        self.scaling_factor = face_vae.scaling_factor

        losses = config.loss
        self.perceptual = None
        if losses.vgg > 0:
            vgg = load_vgg19(_require(config.models.vgg19, "VGG19 weights", "models.vgg19"),
                             losses.vgg_channels, losses.vgg_rescale_input)
            self.perceptual = PerceptualLoss(vgg, losses.pyramid_scales, losses.vgg_layer_weights,
                                             losses.perceptual_size).to(device)

        d = config.discriminator
        d_kwargs = dict(scales=d.scales, block_expansion=d.block_expansion, max_features=d.max_features,
                        num_blocks=d.num_blocks, spectral_norm=d.spectral_norm)
        self.discriminators: dict[str, MultiScaleDiscriminator] = {}
        if losses.gan > 0:
            self.discriminators["image"] = MultiScaleDiscriminator(**d_kwargs).train()
        if losses.mouth_gan > 0:
            self.discriminators["mouth"] = MultiScaleDiscriminator(**d_kwargs).train()

        self.syncnet: SyncNet | None = None
        if losses.sync > 0:
            sync_config = load_syncnet_config(_require(config.models.syncnet_config, "The SyncNet config",
                                                       "models.syncnet_config"))
            weights = _require(config.models.syncnet, "SyncNet weights", "models.syncnet")
            self.syncnet = load_syncnet(sync_config, weights, device).eval().requires_grad_(False)
            if self.syncnet.num_frames != config.data.n_sample_frames:
                raise ValueError(f"The SyncNet reads {self.syncnet.num_frames} frames; set data.n_sample_frames "
                                 f"to that (it is {config.data.n_sample_frames})")

    def _build_optimizers(self) -> None:
        optim, steps = self.config.optim, self.config.max_train_steps
        self.optimizer = build_optimizer(optim, [p for p in self.unet.parameters() if p.requires_grad])
        self.scheduler = get_scheduler(optim.lr_scheduler, self.optimizer, num_warmup_steps=optim.warmup_steps,
                                       num_training_steps=steps)
        d = self.config.discriminator
        self.d_optimizers, self.d_schedulers = {}, {}
        for name, discriminator in self.discriminators.items():
            optimizer = torch.optim.AdamW(discriminator.parameters(), lr=d.lr, betas=tuple(d.betas),
                                          weight_decay=d.weight_decay, eps=d.eps)
            self.d_optimizers[name] = optimizer
            self.d_schedulers[name] = cosine_annealing(optimizer, steps, d.eta_min)

    def _build_data(self) -> None:
        config = self.config
        samples = (config.max_train_steps * config.gradient_accumulation_steps * config.train_batch_size
                   * self.accelerator.num_processes)
        with_mel = self.syncnet is not None
        self.dataset = LipSyncDataset(config.data.train_root, config.data, config.seed, samples, with_mel,
                                      config.loss.mouth_padding)
        self.dataloader = DataLoader(self.dataset, batch_size=config.train_batch_size, shuffle=False,
                                     num_workers=config.data.num_workers, drop_last=True,
                                     pin_memory=self.device.type == "cuda",
                                     persistent_workers=config.data.num_workers > 0)
        val_root = config.data.val_root or config.data.train_root
        self.val_dataset = LipSyncDataset(val_root, config.data, config.seed + 1, config.num_validation_samples)

    def _prepare(self) -> None:
        names = list(self.discriminators)
        prepared = self.accelerator.prepare(
            self.unet, self.optimizer, self.dataloader,
            *[self.discriminators[n] for n in names], *[self.d_optimizers[n] for n in names],
        )
        self.unet, self.optimizer, self.dataloader = prepared[:3]
        self.model = self.unet
        self.discriminators = dict(zip(names, prepared[3:3 + len(names)]))
        self.d_optimizers = dict(zip(names, prepared[3 + len(names):]))

    # ----------------------------------------------------------------------------------------- forward
    def generate(self, unet: torch.nn.Module, targets: torch.Tensor, references: torch.Tensor,
                 audio: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 256, 256]`` targets and references + ``[N, tokens, 384]`` audio -> generated images in [-1, 1]."""
        with torch.no_grad():
            both = torch.cat([mask_lower_half(targets), references]).contiguous()
            latents = self.vae.encode(both).latent_dist.mode() * self.scaling_factor
            masked, reference = latents.chunk(2)
        if self.config.model.audio_positional_encoding:
            audio = audio + positional_encoding(audio.shape[1]).to(audio.device, audio.dtype)
        timestep = torch.zeros(1, dtype=torch.long, device=targets.device)
        predicted = unet(torch.cat([masked, reference], dim=1), timestep, encoder_hidden_states=audio).sample
        return self.vae.decode(predicted / self.scaling_factor).sample

    def _adversarial(self, name: str, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generator-side GAN and feature-matching terms, through a frozen view of discriminator ``name``."""
        discriminator = self.accelerator.unwrap_model(self.discriminators[name])
        resized_real, resized_fake = self.perceptual_resize(real), self.perceptual_resize(fake)
        with torch.no_grad():
            real_out = discriminator(resized_real)
        fake_out = discriminator(resized_fake)
        return lsgan_generator_loss(fake_out), feature_matching_loss(real_out, fake_out,
                                                                     self.config.loss.feature_matching)

    def perceptual_resize(self, images: torch.Tensor) -> torch.Tensor:
        """Bilinear resize to the perceptual-loss size (224): what the generator-side GAN terms see."""
        size = self.config.loss.perceptual_size
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)

    def _generator_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, torch.Tensor]:
        losses, weights = {}, self.config.loss
        targets = batch["pixel_values"].flatten(0, 1)
        references = batch["ref_pixel_values"].flatten(0, 1)
        audio = batch["audio_features"].flatten(0, 1)
        prediction = self.generate(self.unet, targets, references, audio)
        losses["l1"] = F.l1_loss(prediction, targets)
        total = weights.l1 * losses["l1"]
        if self.perceptual is not None:
            losses["vgg"] = self.perceptual(prediction, targets)
            total = total + weights.vgg * losses["vgg"]
        adversarial_on = self.global_step >= weights.start_gan
        for name, weight in (("image", weights.gan), ("mouth", weights.mouth_gan)):
            if name not in self.discriminators:
                continue
            real, fake = targets, prediction
            if name == "mouth":
                boxes = batch["mouth_boxes"].flatten(0, 1)
                real, fake = crop_boxes(targets, boxes, FACE_SIZE), crop_boxes(prediction, boxes, FACE_SIZE)
            self.discriminators[name].requires_grad_(False)
            adversarial, matching = self._adversarial(name, real, fake)
            self.discriminators[name].requires_grad_(True)
            prefix = "" if name == "image" else "mouth_"
            losses[f"{prefix}gan"], losses[f"{prefix}fm"] = adversarial, matching
            total = total + (weight if adversarial_on else 0.0) * adversarial + matching
        if self.syncnet is not None:
            frames = prediction.view(*batch["pixel_values"].shape[:2], *prediction.shape[1:])
            visual, audio_embedding = self.syncnet(SyncNet.stack_frames(frames), batch["mel"])
            losses["sync"] = sync_loss(visual, audio_embedding)
            total = total + weights.sync * losses["sync"]
        return total, losses, prediction

    def _discriminator_losses(self, batch: dict[str, torch.Tensor], prediction: torch.Tensor) -> dict:
        losses = {}
        targets = batch["pixel_values"].flatten(0, 1)
        fake = prediction.detach()
        for name, discriminator in self.discriminators.items():
            real = targets
            if name == "mouth":
                boxes = batch["mouth_boxes"].flatten(0, 1)
                real, fake_view = crop_boxes(targets, boxes, FACE_SIZE), crop_boxes(fake, boxes, FACE_SIZE)
            else:
                fake_view = fake
            losses["d_loss" if name == "image" else "d_mouth_loss"] = lsgan_discriminator_loss(
                discriminator(real), discriminator(fake_view))
        return losses

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One micro-batch: generator update (and discriminator updates); returns the detached losses."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.unet, *self.discriminators.values()):
            with accelerator.autocast():
                total, losses, prediction = self._generator_losses(batch)
            accelerator.backward(total)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.unet.parameters(), self.config.optim.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.discriminators:
                with accelerator.autocast():
                    d_losses = self._discriminator_losses(batch, prediction)
                accelerator.backward(sum(d_losses.values()))
                for name, optimizer in self.d_optimizers.items():
                    optimizer.step()
                    if accelerator.sync_gradients:
                        self.d_schedulers[name].step()
                    optimizer.zero_grad(set_to_none=True)
                losses.update(d_losses)
        losses["loss"] = total
        return {key: float(value.detach()) for key, value in losses.items()}

    # ----------------------------------------------------------------------------------------- state
    def weights_state(self) -> dict[str, torch.Tensor]:
        if self.lora_config is None:
            return super().weights_state()
        return lora_state_dict(self.accelerator.unwrap_model(self.unet))

    def save_weights(self, weights: dict, path: Path) -> None:
        if self.lora_config is None:
            super().save_weights(weights, path)
            return
        save_lora(weights, self.lora_config, path, {"step": str(self.global_step), "exp_name": self.config.exp_name})

    def load_weights(self, path: Path) -> None:
        if self.lora_config is None:
            super().load_weights(path)
            return
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.accelerator.unwrap_model(self.unet), read_lora(path).state_dict,
                                           adapter_name=ADAPTER_NAME)
        if result.unexpected_keys:
            raise ValueError(f"{path} does not fit this run's LoRA: {result.unexpected_keys[:5]}")

    def training_state(self) -> dict:
        unwrap = self.accelerator.unwrap_model
        state = {
            "scheduler": self.scheduler.state_dict(),
            "discriminators": {n: unwrap(d).state_dict() for n, d in self.discriminators.items()},
            "discriminator_schedulers": {n: s.state_dict() for n, s in self.d_schedulers.items()},
        }
        if self.config.save_optimizer_state:
            state["optimizer"] = self.optimizer.state_dict()
            state["discriminator_optimizers"] = {n: o.state_dict() for n, o in self.d_optimizers.items()}
        return state

    def load_training_state(self, state: dict) -> None:
        """Restore the states; a checkpoint saved without optimizer states restarts the optimizers' moments."""
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            for name, optimizer in self.d_optimizers.items():
                optimizer.load_state_dict(state["discriminator_optimizers"][name])
        else:
            logger.warning("%s holds no optimizer states (save_optimizer_state: false): the optimizers restart "
                           "their moments, so the resumed run differs from an uninterrupted one.",
                           f"state-{state['step']}.pt")
        restore_scheduler(self.scheduler, state["scheduler"])
        for name, discriminator in self.discriminators.items():
            self.accelerator.unwrap_model(discriminator).load_state_dict(state["discriminators"][name])
            restore_scheduler(self.d_schedulers[name], state["discriminator_schedulers"][name])

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Save ``validation/step-<step>.png`` (rows: reference | masked target | generated | target); L1 on them."""
        if not self.accelerator.is_main_process:
            return {}
        unet = self.accelerator.unwrap_model(self.unet).eval()
        rows, errors = [], []
        for index in range(len(self.val_dataset)):
            item = self.val_dataset[index]
            target = item["pixel_values"][:1].to(self.device)
            reference = item["ref_pixel_values"][:1].to(self.device)
            with self.accelerator.autocast():
                generated = self.generate(unet, target, reference, item["audio_features"][:1].to(self.device)).float()
            errors.append(F.l1_loss(generated, target).item())
            rows.append([reference[0], mask_lower_half(target)[0], generated[0], target[0]])
        unet.train()
        runs.save_image_grid(rows, self.run_dir / "validation" / f"step-{self.global_step:07d}.png")
        return {"val_l1": sum(errors) / len(errors)}


def main(argv: Sequence[str] | None = None) -> None:
    config = config_from_command_line(argv, TrainConfig, "python -m training.train", __doc__,
                                      "training/configs/stage1.yaml or stage2.yaml")
    LipSyncTrainer(config).train()


if __name__ == "__main__":
    main()
