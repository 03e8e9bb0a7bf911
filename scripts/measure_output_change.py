#!/usr/bin/env python3
"""How much the fast paths change the output: reduced precision and partial decoding vs fp32 + full decode.

Dubs frames of a shared test clip with the given weights (random full-size ones
are fine: the numbers describe the arithmetic, not lip-sync quality) and
prints, per configuration, the change of the pasted region against the
fp32/full reference (mean and max grey levels, PSNR) and the VAE decode time.

Decode times are CPU seconds of the process (``time.process_time``) with
``--threads`` threads (default 1), the best of ``--repeats`` rounds that
alternate the configurations of a dtype: on a shared machine that compares the
work, not the other processes. ``--previous`` adds the partial decode before
the PartialDecoder (the latents cut DECODE_HALO=2 rows above the first needed
row, the rest of the decoder unchanged) for comparison.

    python scripts/measure_output_change.py --models-dir MODELS --media ../shared/media \
        --halos 4 --coarse 1 2 --previous
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from musetalk_lib import vae as vae_module
from musetalk_lib.avatar import AvatarSettings, build_track
from musetalk_lib.blending import blend_alpha, expanded_square, first_pasted_face_row, landmark_mask, paste_face
from musetalk_lib.crop import crop_face
from musetalk_lib.faces import load_landmarks_json
from musetalk_lib.frame_source import open_source
from musetalk_lib.unet import load_unet
from musetalk_lib.vae import load_vae
from musetalk_lib.weights import find_model_files


def pasted(frames, faces, track, indices, variant="normal"):
    out = []
    for frame, face, index in zip(frames, faces, indices):
        box = track.box(index)
        square = expanded_square(box)
        alpha = blend_alpha(landmark_mask(track.landmarks[index], square), box, square, variant)
        out.append(paste_face(frame, face, box, square, alpha))
    return np.stack(out)


def region_change(reference, other, track, indices) -> tuple[float, int, float]:
    diffs = []
    for ref, got, index in zip(reference, other, indices):
        x1, y1, x2, y2 = expanded_square(track.box(index))
        diffs.append((ref[max(y1, 0):y2, max(x1, 0):x2].astype(float) - got[max(y1, 0):y2, max(x1, 0):x2]).ravel())
    diff = np.concatenate(diffs)
    mse = float(np.mean(diff ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
    return float(np.abs(diff).mean()), int(np.abs(diff).max()), psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", required=True)
    parser.add_argument("--media", default=str(Path(__file__).resolve().parents[2] / "shared" / "media"))
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--halos", type=int, nargs="+", default=[vae_module.DECODE_HALO])
    parser.add_argument("--coarse", type=int, nargs="+", default=[vae_module.COARSE_SKIPPED_UPSAMPLINGS],
                        help="upsamplings the coarse band skips (COARSE_SKIPPED_UPSAMPLINGS)")
    parser.add_argument("--dtypes", nargs="+", default=["bf16"])
    parser.add_argument("--previous", action="store_true", help="also the previous partial decode (latents cut)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    media = Path(args.media)
    source = open_source(media / "talking_closeup.mp4")
    faces = load_landmarks_json(media / "landmarks" / "talking_closeup.json")
    track = build_track(faces, source.width, source.height, AvatarSettings())
    indices = list(range(0, source.num_frames, max(1, source.num_frames // args.frames)))[:args.frames]
    frames = source.frames(indices)
    files = find_model_files(args.models_dir, "v15")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    audio = torch.randn(len(indices), 50, 384, generator=torch.Generator().manual_seed(0))
    crops = np.stack([crop_face(frame, track.box(i)) for frame, i in zip(frames, indices)])

    def generate(dtype_name: str):
        vae = load_vae(files.vae_dir, dtype=dtypes[dtype_name])
        unet = load_unet(files.unet_config, files.unet_weights, dtype=dtypes[dtype_name])
        return vae, unet(vae.encode_masked_and_reference(crops), audio)

    first_row = min(first_pasted_face_row(track.box(i), expanded_square(track.box(i))) for i in indices)
    partial_rows = [(f"partial (halo {h}, coarse {k})", h, k) for h in args.halos for k in args.coarse]
    if args.previous:
        partial_rows.insert(0, ("previous: latents cut (halo 2)", 2, None))
    groups = [("fp32", [("full", 0, None)] + partial_rows)]
    groups += [(name, [("full", 0, None)] + partial_rows) for name in args.dtypes]
    torch.set_num_threads(args.threads)
    results, reference, base = [], None, None
    for dtype_name, rows in groups:
        vae, predicted = generate(dtype_name)

        def decode(halo: int, coarse: int | None, latents: torch.Tensor) -> np.ndarray:
            if not halo:
                return vae.decode(latents)
            vae_module.DECODE_HALO = halo
            if coarse is not None:
                vae_module.COARSE_SKIPPED_UPSAMPLINGS = coarse
                return vae.decode(latents, first_row)
            return previous_partial_decode(vae, latents, vae.first_latent_row(first_row))

        seconds = {}
        for _ in range(args.repeats):
            for label, halo, coarse in rows:
                started = time.process_time()
                decode(halo, coarse, predicted)
                seconds[label] = min(seconds.get(label, float("inf")), time.process_time() - started)
        for label, halo, coarse in rows:
            out = pasted(frames, decode(halo, coarse, predicted), track, indices)
            if reference is None:
                reference, base = out, seconds[label]
            mean, peak, psnr = region_change(reference, out, track, indices)
            first = 0 if not halo else first_row // vae_module.LATENT_SCALE - halo
            results.append((dtype_name, label, first, seconds[label], mean, peak, psnr))
        del vae, predicted

    print(f"{len(indices)} frames of talking_closeup.mp4, first pasted face row {first_row}, "
          f"{args.threads} thread(s), CPU seconds, best of {args.repeats}")
    print("| dtype | decode | first latent row | decode CPU s | vs fp32/full: mean | max | PSNR dB | decode speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for dtype_name, label, first, seconds, mean, peak, psnr in results:
        print(f"| {dtype_name} | {label} | {first} | {seconds:.2f} | {mean:.3f} | {peak} | {psnr:.1f} | "
              f"{base / seconds:.2f}x |")


def previous_partial_decode(vae, latents: torch.Tensor, first: int) -> np.ndarray:
    """The partial decode before PartialDecoder: the whole diffusers decoder on the latent rows ``first..31``."""
    with torch.inference_mode():
        scaled = (1 / vae.scaling_factor) * latents[:, :, first:].to(vae.device, vae.dtype)
        image = torch.cat([vae.vae.decode(scaled[part], return_dict=False)[0] for part in vae._passes(len(scaled))])
        image = torch.round((image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).to(torch.uint8)
        return torch.nn.functional.pad(image, (0, 0, 0, 0, first * vae_module.LATENT_SCALE, 0)).numpy()


if __name__ == "__main__":
    main()
