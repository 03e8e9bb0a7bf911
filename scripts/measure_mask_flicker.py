#!/usr/bin/env python3
"""How much the blend mask's edge flickers, with and without ``mask_smoothing``.

For a stretch of a shared clip where the head hardly moves, builds the track
from the clip's landmark file, computes each frame's 512x512 blend mask and
brings it into frame pixels (through the crop box, as the paste does). The
flicker is ``1 - IoU`` of consecutive masks (the fraction of the mask area that
changes from one frame to the next), also for the alpha the paste uses
(``alpha >= 128``), averaged over the stretch, for each smoothing radius.

``--mask landmarks`` (default) needs no weights. The parsing modes (``jaw`` is
v1.5's default) need the real BiSeNet weights under ``--models-dir``: random
weights give random masks and meaningless figures.

    python scripts/measure_mask_flicker.py --media ../shared/media
    python scripts/measure_mask_flicker.py --media ../shared/media --mask jaw --models-dir models
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from musetalk_lib.avatar import AvatarSettings, build_track, face_masks
from musetalk_lib.blending import blend_alpha, expanded_square
from musetalk_lib.faces import load_landmarks_json
from musetalk_lib.frame_source import open_source
from musetalk_lib.mask_smoothing import mask_to_frame, smooth_masks

STRETCHES = {  # clip: (first, last) frames where the face box centre moves at most ~2 px per frame
    "face_occluded": (0, 9),
    "talking_closeup": (0, 9),
    "talking_small_face": (21, 29),
    "talking_avatar": (24, 35),
}


def in_frame(masks, track, indices, expand, size):
    """Each 512x512 mask as a boolean image in frame pixels."""
    return [cv2.warpAffine(mask, mask_to_frame(track, index, expand)[:2], size, flags=cv2.INTER_LINEAR) > 127
            for mask, index in zip(masks, indices)]


def alphas_in_frame(masks, track, indices, expand, size):
    """The paste's alpha of each frame (``>= 128``) in frame pixels (no rotation: ``align_roll`` off)."""
    result = []
    for mask, index in zip(masks, indices):
        box = track.box(index)
        square = expanded_square(box, expand)
        alpha = blend_alpha(mask, box, square)
        canvas = np.zeros((size[1] + 2 * alpha.shape[0], size[0] + 2 * alpha.shape[1]), np.uint8)
        xs, ys = square[0] + alpha.shape[1], square[1] + alpha.shape[0]
        canvas[ys:ys + alpha.shape[0], xs:xs + alpha.shape[1]] = alpha
        result.append(canvas[alpha.shape[0]:alpha.shape[0] + size[1], alpha.shape[1]:alpha.shape[1] + size[0]] >= 128)
    return result


def flicker(images) -> float:
    """Mean ``1 - IoU`` of consecutive boolean images."""
    changes = [1 - (a & b).sum() / max((a | b).sum(), 1) for a, b in zip(images, images[1:])]
    return float(np.mean(changes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=Path("../shared/media"))
    parser.add_argument("--mask", default="landmarks", choices=["landmarks", "jaw", "raw", "neck"])
    parser.add_argument("--models-dir", type=Path, help="with a parsing --mask: the official weights layout")
    parser.add_argument("--radii", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    face_parser = None
    if args.mask != "landmarks":
        from musetalk_lib.face_parsing import load_face_parser
        from musetalk_lib.weights import find_model_files

        face_parser = load_face_parser(find_model_files(args.models_dir, "v15").face_parsing, "cpu", "fp32")
    print(f"mask {args.mask}; 1 - IoU of consecutive frames, mask / alpha >= 128 (lower is steadier)")
    print("| clip | frames | off | " + " | ".join(f"radius {radius}" for radius in args.radii) + " |")
    print("|---|---|---|" + "---|" * len(args.radii))
    for clip, (first, last) in STRETCHES.items():
        source = open_source(args.media / f"{clip}.mp4")
        settings = AvatarSettings(mask_mode=args.mask)
        track = build_track(load_landmarks_json(args.media / "landmarks" / f"{clip}.json"), source.width,
                            source.height, settings)
        margin = max(args.radii)  # the smoothing window's neighbours around the stretch
        indices = [index for index in range(max(first - margin, 0), min(last + margin + 1, source.num_frames))
                   if track.has_face[index]]
        masks = face_masks(source.frames(indices), track, indices, args.mask, settings, face_parser)
        measured = [position for position, index in enumerate(indices) if first <= index <= last]
        size = (source.width, source.height)
        cells = []
        for smoothed in [masks] + [smooth_masks(track, indices, masks, settings.expand, radius)
                                   for radius in args.radii]:
            kept, at = smoothed[measured], [indices[position] for position in measured]
            cells.append(f"{flicker(in_frame(kept, track, at, settings.expand, size)):.4f} / "
                         f"{flicker(alphas_in_frame(kept, track, at, settings.expand, size)):.4f}")
        print(f"| {clip} | {first}-{last} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
