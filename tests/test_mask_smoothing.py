"""Blend masks smoothed over time (``mask_smoothing``), aligned through the crop boxes."""

import cv2
import numpy as np
import pytest

from musetalk_lib import avatar as avatar_module
from musetalk_lib.avatar import AvatarSettings, BlendMasks, FaceTrack, build_track, face_masks, prepare_avatar
from musetalk_lib.faces import load_landmarks_json
from musetalk_lib.frame_source import ArraySource
from musetalk_lib.mask_smoothing import MaskSmoother, mask_to_frame, smooth_masks
from musetalk_lib.video_io import VideoReader

LANDMARKS = AvatarSettings(mask_mode="landmarks")


def moving_track(count=12, step=3):
    """A 120x140 face box moving right by ``step`` pixels a frame; frame 5 has no face."""
    boxes = np.array([[100 + step * i, 80, 220 + step * i, 220] for i in range(count)], np.int32)
    has_face = np.ones(count, bool)
    has_face[5] = False
    return FaceTrack(boxes, has_face, np.zeros((count, 68, 2), np.float32))


def ellipse_masks(track, indices, jitter=0.0, seed=0):
    """An ellipse fixed relative to each box, its size jittering by up to ``jitter`` of the grid."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in indices:
        mask = np.zeros((512, 512), np.uint8)
        axes = (int(120 * (1 + rng.uniform(-jitter, jitter))), int(90 * (1 + rng.uniform(-jitter, jitter))))
        cv2.ellipse(mask, (256, 300), axes, 0, 0, 360, 255, -1)
        masks.append(mask)
    return np.stack(masks)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_masks_that_move_with_the_box_move_with_it():
    track = moving_track()
    indices = track.face_frames.tolist()
    masks = ellipse_masks(track, indices)
    smoothed = smooth_masks(track, indices, masks, 1.5, 2)
    whole_window = [index for index in indices if all(track.has_face[index - 2:index + 3]) and 2 <= index <= 9]
    assert whole_window == [2, 8, 9]
    for index, mask, smooth in zip(indices, masks, smoothed):
        assert iou(mask > 127, smooth > 127) > (0.99 if index in whole_window else 0.9)


def test_streaming_gives_the_same_masks_as_all_at_once():
    track = moving_track()
    indices = track.face_frames.tolist()
    masks = ellipse_masks(track, indices, jitter=0.1)
    whole = smooth_masks(track, indices, masks, 1.5, 2)
    smoother = MaskSmoother(track, 1.5, 2)
    pieces = [smoother.push(indices[start:start + 3], masks[start:start + 3]) for start in range(0, len(indices), 3)]
    assert [len(piece) for piece in pieces] == [1, 4, 2, 2]  # held back until their neighbours are in
    assert np.array_equal(np.concatenate([*pieces, smoother.finish()]), whole)


def in_frame(masks, track, indices):
    return [cv2.warpAffine(mask, mask_to_frame(track, index, 1.5)[:2], (350, 350)) > 127
            for mask, index in zip(masks, indices)]


def flicker(images):
    return np.mean([1 - iou(a, b) for a, b in zip(images, images[1:])])


def test_smoothing_steadies_the_mask_edge_on_a_still_head(media):
    track = build_track(load_landmarks_json(media / "landmarks" / "face_occluded.json"), 350, 350, LANDMARKS)
    indices = list(range(12))  # the head hardly moves in frames 0-9; 10-11: neighbours for the window
    masks = face_masks(None, track, indices, "landmarks", LANDMARKS, None)
    smoothed = smooth_masks(track, indices, masks, 1.5, 2)
    before = flicker(in_frame(masks[:10], track, indices[:10]))
    after = flicker(in_frame(smoothed[:10], track, indices[:10]))
    assert after < 0.75 * before  # measured: 0.0199 -> 0.0126


@pytest.fixture(scope="module")
def clip(media):
    with VideoReader(media / "talking_closeup.mp4") as reader:
        frames = [frame for frame, _ in zip(reader, range(7))]
    return ArraySource(frames, 15), load_landmarks_json(media / "landmarks" / "talking_closeup.json")[:7]


def test_prepared_avatar_holds_the_smoothed_masks_and_its_own_cache_key(tiny_models, clip, tmp_path, monkeypatch):
    monkeypatch.setattr(avatar_module, "SHARD_SIZE", 3)  # the masks lag the latents across shard boundaries
    source, faces = clip
    smooth = AvatarSettings(mask_mode="landmarks", mask_smoothing=2)
    smoothed = prepare_avatar(source, tiny_models.vae, tmp_path, smooth, faces=faces)
    plain = prepare_avatar(source, tiny_models.vae, tmp_path, LANDMARKS, faces=faces)
    again = prepare_avatar(source, tiny_models.vae, tmp_path, smooth, faces=faces)
    assert smoothed.folder != plain.folder and again.folder == smoothed.folder
    indices = list(range(7))
    raw = np.stack([plain.mask(index) for index in indices])
    expected = smooth_masks(plain.track, indices, raw, 1.5, 2)
    assert np.array_equal(np.stack([again.mask(index) for index in indices]), expected)
    assert not np.array_equal(expected, raw)
    assert np.array_equal(again.latents(indices), plain.latents(indices))


def test_nodes_smoothed_masks_equal_the_prepared_avatars(tiny_models, clip, tmp_path):
    """SmoothedMasks (the nodes' path, no avatar cache) gives the masks a prepared avatar holds."""
    from musetalk_lib.avatar import SmoothedMasks

    source, faces = clip
    smooth = AvatarSettings(mask_mode="landmarks", mask_smoothing=2)
    prepared = prepare_avatar(source, tiny_models.vae, tmp_path, smooth, faces=faces)
    on_the_fly = SmoothedMasks(source, prepared.track, smooth, "landmarks", batch_size=3)
    indices = [int(index) for index in prepared.track.face_frames]
    assert np.array_equal(on_the_fly.packed_masks(indices), prepared.packed_masks(indices))


def test_on_demand_masks_refuse_smoothing():
    with pytest.raises(ValueError, match="mask_smoothing needs"):
        BlendMasks(moving_track(), AvatarSettings(mask_smoothing=1), "landmarks")
    with pytest.raises(ValueError, match="mask_smoothing"):
        AvatarSettings(mask_smoothing=-1)
