"""The SD VAE (sd-vae-ft-mse) as MuseTalk uses it: masked and reference face latents, decoding.

Images are 256x256 RGB ``uint8`` arrays. Latents are scaled by the VAE's
scaling factor (0.18215), and encoding is deterministic (the posterior mode).

Decoding can skip most of the work on the upper rows: the blend only ever
shows the lower part of the generated face, so :meth:`FaceVAE.decode` takes
the first pixel row the caller needs (see :class:`PartialDecoder`).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from .checkpoint import load_model_weights
from .crop import FACE_SIZE
from .devices import run_with_fp16_fallback
from .weights import first_existing, path_identity

__all__ = ["DECODE_HALO", "LATENT_SCALE", "FaceVAE", "PartialDecoder", "load_vae"]

LATENT_SCALE = 8  # pixels per latent row/column
# Partial decode (see PartialDecoder and README: partial decode):
DECODE_HALO = 4  # latent rows decoded exactly above the first needed row
EDGE_ROWS = 2  # top rows of that exact band left out of the GroupNorm statistics (the cut's zero padding reaches them)
COARSE_SKIPPED_UPSAMPLINGS = 1  # upsamplings the rows above the exact band skip (2: faster, further from full)
CPU_IMAGES_PER_PASS = 4  # on a CPU (compute-bound, no speed lost) activations stay at ~0.6 GB in fp32
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # preferred first
DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def load_vae(folder: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> FaceVAE:
    """Build the ``AutoencoderKL`` of a local diffusers folder from its ``config.json`` and load its weights.

    The weights are ``diffusion_pytorch_model.safetensors`` or, without it,
    ``diffusion_pytorch_model.bin``, read by :mod:`.checkpoint` (no code in a
    pickle ever runs). Every weight must match the config. Files written by
    older diffusers versions, such as sd-vae-ft-mse's, name the mid-block
    attention ``query``/``key``/``value``/``proj_attn``; those names are mapped
    to today's.

    Raises:
        FileNotFoundError: no weights file in ``folder``.
        CheckpointError: the weights file is damaged, unsafe, or does not match ``config.json``.
    """
    folder = Path(folder)
    weights = first_existing(folder, WEIGHTS_FILES, "VAE weights")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, local_files_only=True))
    rename = partial(_current_attention_names, model_names=set(vae.state_dict()))
    load_model_weights(vae, weights, dtype, convert=rename, hint=f"Check that it comes with {folder / 'config.json'}.")
    return FaceVAE(vae.to(device).eval().requires_grad_(False), weights_id=path_identity(folder))


def _current_attention_names(state_dict: dict[str, torch.Tensor], model_names: set[str]) -> dict[str, torch.Tensor]:
    """Rename diffusers' deprecated attention weights (``...attentions.0.query.weight``) to the model's names."""
    renamed = {}
    for name, tensor in state_dict.items():
        module, _, leaf = name.rpartition(".")
        parent, _, child = module.rpartition(".")
        current = f"{parent}.{DEPRECATED_ATTENTION_NAMES.get(child, child)}.{leaf}"
        renamed[current if name not in model_names and current in model_names else name] = tensor
    return renamed


class _Band:
    """A horizontal band of the decoder's feature map.

    ``scale``: full-resolution pixels per band pixel along each axis (1 for the exact band; 2, 4, ... for the
    coarse band once it has skipped upsamplings). ``counted``: the band's rows (start, stop) that count in the
    GroupNorm statistics.
    """

    def __init__(self, scale: int, counted: tuple[int, int], skipped_upsamplings: int):
        self.scale, self.counted, self.skipped_upsamplings = scale, counted, skipped_upsamplings


def _normalize(norm: nn.GroupNorm, activation: nn.Module | None, tensors: list[torch.Tensor],
               bands: list[_Band]) -> list[torch.Tensor]:
    """``activation(norm(x))`` for every band, with the GroupNorm statistics of the whole map the bands stand for.

    Sums per channel (fp32) over each band's counted rows, weighted by the pixels each band pixel stands for,
    combined per group in fp64.
    """
    groups, sums, squares, count = norm.num_groups, 0, 0, 0
    for x, band in zip(tensors, bands):
        start, stop = band.counted
        if stop > start:
            counted = x[:, :, start:stop]
            weight = band.scale ** 2
            sums = sums + weight * counted.sum(dim=(2, 3), dtype=torch.float32).double()
            norms = torch.linalg.vector_norm(counted, dim=(2, 3), dtype=torch.float32).double()
            squares = squares + weight * norms ** 2
            count += weight * counted.shape[2] * counted.shape[3]
    n = sums.shape[0]
    count *= norm.num_channels // groups
    mean = sums.reshape(n, groups, -1).sum(dim=2) / count
    var = (squares.reshape(n, groups, -1).sum(dim=2) / count - mean ** 2).clamp(min=0)
    per_channel = norm.num_channels // groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_channel, dim=1)
    shift = -mean.repeat_interleave(per_channel, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    out = []
    for x in tensors:
        y = torch.addcmul(shift.to(x.dtype)[:, :, None, None], x, scale.to(x.dtype)[:, :, None, None])
        if isinstance(activation, nn.SiLU):
            y = F.silu(y, inplace=True)
        elif activation is not None:
            y = activation(y)
        out.append(y)
    return out


def _resnet(resnet: nn.Module, tensors: list[torch.Tensor], bands: list[_Band]) -> list[torch.Tensor]:
    """A diffusers ``ResnetBlock2D`` without time embedding, on every band."""
    hidden = [resnet.conv1(x) for x in _normalize(resnet.norm1, resnet.nonlinearity, tensors, bands)]
    hidden = [resnet.conv2(resnet.dropout(x)) for x in _normalize(resnet.norm2, resnet.nonlinearity, hidden, bands)]
    if resnet.conv_shortcut is not None:
        tensors = [resnet.conv_shortcut(x) for x in tensors]
    return [(x + h) / resnet.output_scale_factor for x, h in zip(tensors, hidden)]


def _phase_kernels(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The four 2x2 kernels (stacked ``[4*out, in, 2, 2]``) and biases that :func:`_upsampled_conv` uses."""
    w = conv.weight
    kernels = []
    for a in (0, 1):
        rows = (w[:, :, :1], w[:, :, 1:2] + w[:, :, 2:]) if a == 0 else (w[:, :, :1] + w[:, :, 1:2], w[:, :, 2:])
        rows = torch.cat(rows, dim=2)
        kernels.append(torch.cat([rows[..., :1], rows[..., 1:2] + rows[..., 2:]], dim=3))
        kernels.append(torch.cat([rows[..., :1] + rows[..., 1:2], rows[..., 2:]], dim=3))
    return torch.cat(kernels).contiguous(), None if conv.bias is None else conv.bias.repeat(4)


def _upsampled_conv(conv: nn.Conv2d, x: torch.Tensor, phase_kernels: tuple[torch.Tensor, torch.Tensor | None]
                    ) -> torch.Tensor:
    """``conv(nearest 2x upsampling of x)`` for a 3x3 convolution with zero padding 1, computed at the low resolution.

    Each output pixel of the 2x2 phase ``(a, b)`` sees 2x2 distinct input pixels, so the phase is a 2x2
    convolution with summed taps: one convolution with the four phases' kernels (16 instead of 36
    multiply-adds per input pixel and channel pair), equal up to float rounding.
    """
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), *phase_kernels)
    n, channels, height, width = x.shape[0], conv.out_channels, x.shape[2], x.shape[3]
    out = x.new_empty(n, channels, 2 * height, 2 * width)
    for index in range(4):
        a, b = divmod(index, 2)
        out[:, :, a::2, b::2] = phases[:, index * channels:(index + 1) * channels, a:a + height, b:b + width]
    return out


def _walkable(vae: AutoencoderKL) -> bool:
    """Whether the decoder is the plain SD layout :class:`PartialDecoder` walks (GroupNorm, no time embedding)."""
    decoder = getattr(vae, "decoder", None)
    try:
        if not (isinstance(decoder.conv_norm_out, nn.GroupNorm) and decoder.mid_block is not None):
            return False
        for block in decoder.up_blocks:
            if getattr(block, "attentions", None):
                return False
            for resnet in block.resnets:
                if not (isinstance(resnet.norm1, nn.GroupNorm) and isinstance(resnet.norm2, nn.GroupNorm)
                        and resnet.time_emb_proj is None and resnet.upsample is None and resnet.downsample is None):
                    return False
            for upsampler in block.upsamplers or []:
                conv = getattr(upsampler, "conv", None)
                if not (upsampler.interpolate and upsampler.use_conv and not upsampler.use_conv_transpose
                        and upsampler.norm is None and isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
                        and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
                        and conv.groups == 1 and conv.padding_mode == "zeros"):
                    return False
            if len(block.upsamplers or []) > 1:
                return False
    except AttributeError:
        return False
    return True


class PartialDecoder:
    """The SD VAE decoder for the rows ``first * 8 .. 255`` only, walking the diffusers ``Decoder`` by hand.

    * ``post_quant_conv``, ``conv_in`` and the mid block (its self-attention and GroupNorms see the whole face)
      run on all 32x32 latents: about 4 % of the decoder's work.
    * The up blocks and the output layers, 96 % of the work, run exactly only on the band from latent row
      ``first`` down. The rows above it go through them as a *coarse band* that skips the first
      :data:`COARSE_SKIPPED_UPSAMPLINGS` nearest-neighbour upsamplings (a quarter of the work per skip), so
      every GroupNorm normalises with statistics over (an estimate of) the whole face, as the full decoder does.
      The exact band's top :data:`EDGE_ROWS` rows, which feel the cut's zero padding, are left out of the
      statistics; the coarse band counts down to them and is computed :data:`EDGE_ROWS` rows further.
    * The upsampling convolutions of the exact band run at the low resolution (:func:`_upsampled_conv`).

    Called with ``(scaled latents [N,4,32,32], first)``; returns the decoder output for rows ``first*8..255``.
    ``torch.compile`` can wrap :meth:`forward` (``compile_with_fallback``).
    """

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae
        self._phase_kernels: dict[int, tuple[tuple, tuple[torch.Tensor, torch.Tensor | None]]] = {}

    def phase_kernels(self, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`_phase_kernels` of ``conv``, kept while its weights stay the same tensor, dtype and device."""
        weight = conv.weight
        # Weights loaded under torch.inference_mode (as ComfyUI runs nodes) have no version counter.
        version = None if weight.is_inference() else weight._version
        key = (weight.data_ptr(), weight.dtype, weight.device, version)
        cached = self._phase_kernels.get(id(conv))
        if cached is None or cached[0] != key:
            cached = self._phase_kernels[id(conv)] = (key, _phase_kernels(conv))
        return cached[1]

    def __call__(self, latents: torch.Tensor, first: int) -> torch.Tensor:
        return self.forward(latents, first)

    def forward(self, latents: torch.Tensor, first: int) -> torch.Tensor:
        decoder = self.vae.decoder
        hidden = latents if self.vae.post_quant_conv is None else self.vae.post_quant_conv(latents)
        hidden = decoder.mid_block(decoder.conv_in(hidden), None)
        hidden = hidden.to(decoder.conv_out.weight.dtype)
        height = hidden.shape[2]
        counted_from = min(first + EDGE_ROWS, height)
        exact = _Band(1, (counted_from - first, height - first), 0)
        coarse = _Band(1, (0, counted_from), COARSE_SKIPPED_UPSAMPLINGS)
        coarse_rows = min(counted_from + EDGE_ROWS, height)
        tensors = [hidden[:, :, first:].contiguous(), hidden[:, :, :coarse_rows].contiguous()]
        bands = [exact, coarse]
        for block in decoder.up_blocks:
            for resnet in block.resnets:
                tensors = _resnet(resnet, tensors, bands)
            for upsampler in block.upsamplers or []:
                upsampled = []
                for x, band in zip(tensors, bands):
                    if band.skipped_upsamplings > 0:  # stays at this resolution, each pixel standing for 2x2
                        band.skipped_upsamplings -= 1
                        band.scale *= 2
                        upsampled.append(upsampler.conv(x))
                    else:
                        band.counted = (2 * band.counted[0], 2 * band.counted[1])
                        upsampled.append(_upsampled_conv(upsampler.conv, x, self.phase_kernels(upsampler.conv)))
                tensors = upsampled
        exact_rows = _normalize(decoder.conv_norm_out, decoder.conv_act, tensors, bands)[0]
        return decoder.conv_out(exact_rows)


class FaceVAE(nn.Module):
    """Masked/reference encoding and decoding of 256x256 face crops."""

    def __init__(self, vae: AutoencoderKL, weights_id: str = ""):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.weights_id = weights_id  # where the weights came from; part of avatar cache keys
        # Not a registered submodule: it only walks self.vae's modules.
        self.__dict__["partial_decoder"] = PartialDecoder(vae) if _walkable(vae) else None

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def _to_model_input(self, faces_rgb: np.ndarray | torch.Tensor, mask_lower_half: bool) -> torch.Tensor:
        pixels = torch.as_tensor(faces_rgb).to(self.device)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (FACE_SIZE, FACE_SIZE, 3) or pixels.dtype != torch.uint8:
            raise ValueError(
                f"Expected uint8 faces of shape [N,{FACE_SIZE},{FACE_SIZE},3], got {tuple(pixels.shape)} {pixels.dtype}"
            )
        x = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32) / 255.0
        if mask_lower_half:
            x[:, :, FACE_SIZE // 2:, :] = 0.0
        x = (x - 0.5) / 0.5
        return x.to(self.dtype)

    @torch.inference_mode()
    def encode(self, faces_rgb: np.ndarray | torch.Tensor, mask_lower_half: bool = False) -> torch.Tensor:
        """``[N,256,256,3]`` uint8 RGB -> scaled posterior-mode latents ``[N,4,32,32]``.

        With ``mask_lower_half`` the rows 128..255 are blanked (they become -1
        after normalisation), as the official code does before encoding.
        """
        x = self._to_model_input(faces_rgb, mask_lower_half)
        return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    @property
    def images_per_pass(self) -> int | None:
        """How many 256x256 images one encoder or decoder pass takes: :data:`CPU_IMAGES_PER_PASS` on a CPU, all on
        other devices (there the caller's batch size bounds the memory)."""
        return CPU_IMAGES_PER_PASS if self.device.type == "cpu" else None

    def _passes(self, count: int, images_per_item: int = 1) -> list[slice]:
        step = max(1, (self.images_per_pass or count * images_per_item) // images_per_item)
        return [slice(start, start + step) for start in range(0, count, step)]

    @torch.inference_mode()
    def encode_masked_and_reference(self, faces_rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The UNet's 8 input channels per face: masked latents first, then the unmasked reference."""
        pieces = []
        for part in self._passes(len(faces_rgb), images_per_item=2):
            faces = faces_rgb[part]
            both = torch.cat([self._to_model_input(faces, True), self._to_model_input(faces, False)])
            masked, reference = (self.vae.encode(both).latent_dist.mode() * self.scaling_factor).chunk(2)
            pieces.append(torch.cat([masked, reference], dim=1))
        return torch.cat(pieces)

    def first_latent_row(self, from_row: int) -> int:
        """The first latent row decoded exactly when output rows ``from_row..255`` are needed (with the halo);
        0 (a full decode) where the decoder has a layout :class:`PartialDecoder` does not know."""
        if self.partial_decoder is None:
            return 0
        return max(0, min(from_row, FACE_SIZE - 1) // LATENT_SCALE - DECODE_HALO)

    @torch.inference_mode()
    def decode_on_device(self, latents: torch.Tensor, from_row: int = 0) -> torch.Tensor:
        """Scaled latents ``[N,4,32,32]`` -> ``[N,256,256,3]`` uint8 RGB on the model's device.

        The official clamp and rounding. ``from_row=0`` decodes everything,
        exactly as the official code. With ``from_row > 0`` the
        :class:`PartialDecoder` decodes the rows from :meth:`first_latent_row`
        down (close to, not equal to, the full decode); the output rows above
        them are black (callers must not show them).
        """
        first = self.first_latent_row(from_row)

        def decode_part(scaled: torch.Tensor) -> torch.Tensor:
            if first:
                return self.partial_decoder(scaled, first)
            return self.vae.decode(scaled, return_dict=False)[0]

        def run() -> torch.Tensor:
            scaled = (1 / self.scaling_factor) * latents.to(self.device, self.dtype)
            return torch.cat([decode_part(scaled[part]) for part in self._passes(len(scaled))])

        image = run_with_fp16_fallback("The VAE decoder", self.vae, run)
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        image = torch.round(image.permute(0, 2, 3, 1) * 255).to(torch.uint8)
        if first:
            image = torch.nn.functional.pad(image, (0, 0, 0, 0, first * LATENT_SCALE, 0))
        return image

    def decode(self, latents: torch.Tensor, from_row: int = 0) -> np.ndarray:
        """:meth:`decode_on_device`, copied to the CPU as a numpy array."""
        return self.decode_on_device(latents, from_row).cpu().numpy()
