#!/usr/bin/env python3
"""How much the fast paths change the output: reduced precision and partial decoding vs fp32 + full decode.

Dubs frames of a shared test clip with the given weights (random full-size ones
are fine: the numbers describe the arithmetic, not lip-sync quality) and
prints, per configuration, the change of the pasted region against the
fp32/full reference (mean and max grey levels, PSNR) and the VAE decode time.

    python scripts/measure_output_change.py --models-dir MODELS --media ../shared/media
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
    parser.add_argument("--dtypes", nargs="+", default=["bf16"])
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
    rows = [("fp32", "full", 0)] + [("fp32", f"partial (halo {h})", h) for h in args.halos]
    for name in args.dtypes:
        rows += [(name, "full", 0)] + [(name, f"partial (halo {h})", h) for h in args.halos]
    results, reference = [], None
    cache = {}
    for dtype_name, label, halo in rows:
        if dtype_name not in cache:
            cache.clear()
            cache[dtype_name] = generate(dtype_name)
        vae, predicted = cache[dtype_name]
        vae_module.DECODE_HALO = halo
        from_row = 0 if label == "full" else first_row
        vae.decode(predicted[:1], from_row)  # warm-up
        started = time.perf_counter()
        faces_out = vae.decode(predicted, from_row)
        seconds = time.perf_counter() - started
        out = pasted(frames, faces_out, track, indices)
        if reference is None:
            reference = out
        mean, peak, psnr = region_change(reference, out, track, indices)
        results.append((dtype_name, label, vae.first_latent_row(from_row), seconds, mean, peak, psnr))

    print(f"{len(indices)} frames of talking_closeup.mp4, first pasted face row {first_row}, "
          f"{torch.get_num_threads()} threads")
    print("| dtype | decode | first latent row | decode s | vs fp32/full: mean | max | PSNR dB | decode speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    base = results[0][3]
    for dtype_name, label, first, seconds, mean, peak, psnr in results:
        print(f"| {dtype_name} | {label} | {first} | {seconds:.2f} | {mean:.3f} | {peak} | {psnr:.1f} | "
              f"{base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
