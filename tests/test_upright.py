"""Upright crops for tilted heads (``align_roll``) on the shared clip turned by +-15 and +-30 degrees."""

import cv2
import numpy as np
import pytest

from musetalk_lib.audio_io import load_audio_16k
from musetalk_lib.avatar import AvatarSettings, build_track, encode_faces, prepare_avatar
from musetalk_lib.crop import crop_face
from musetalk_lib.faces import Face, load_landmarks_json
from musetalk_lib.frame_source import ArraySource
from musetalk_lib.head_pose import eye_line_angle
from musetalk_lib.pipeline import DubOptions, compute_audio_features, lip_sync_frames
from musetalk_lib.upright import transform_points
from musetalk_lib.video_io import VideoReader

FRAMES = 3
FPS = 15
FAST = AvatarSettings(mask_mode="landmarks")


@pytest.fixture(scope="module")
def clip(media):
    with VideoReader(media / "talking_avatar.mp4") as reader:
        frames = [frame for frame, _ in zip(reader, range(FRAMES))]
    return frames, [faces[0] for faces in load_landmarks_json(media / "landmarks" / "talking_avatar.json")[:FRAMES]]


def turned(clip, degrees):
    """The clip turned by ``degrees`` (counter-clockwise on screen) around the first face's centre, landmarks too."""
    frames, faces = clip
    centre = tuple(float(v) for v in faces[0].landmarks.mean(axis=0))
    rotation = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    height, width = frames[0].shape[:2]
    frames = [cv2.warpAffine(frame, rotation, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
              for frame in frames]
    faces = [[Face(box=tuple(face.box), landmarks=transform_points(face.landmarks, rotation))] for face in faces]
    return frames, faces


def crop_eye_line(track, index):
    """The eye line's angle in the 256x256 crop (the box is resized to it without keeping the aspect)."""
    x1, y1, x2, y2 = track.box(index)
    return eye_line_angle((track.landmarks[index] - (x1, y1)) * (256 / (x2 - x1), 256 / (y2 - y1)))


@pytest.mark.parametrize("degrees", [15, -15, 30, -30])
def test_tilted_faces_are_cropped_level(clip, degrees):
    frames, faces = turned(clip, degrees)
    height, width = frames[0].shape[:2]
    plain = build_track(faces, width, height, AvatarSettings())
    level = build_track(faces, width, height, AvatarSettings(align_roll=5))
    for index in range(FRAMES):
        assert abs(crop_eye_line(plain, index)) > 2  # the test would fail without the option
        assert abs(crop_eye_line(level, index)) < 2
    # The pixels too: the upright crop of the turned clip is the upright crop of the clip itself (the lower
    # face: the turned clip repeats other pixels past the frame edges).
    frames_0, faces_0 = clip
    reference = build_track([[face] for face in faces_0], width, height, AvatarSettings(align_roll=0))
    for index in range(FRAMES):
        upright = crop_face(level.upright(frames[index], index), level.box(index)).astype(int)
        expected = crop_face(reference.upright(frames_0[index], index), reference.box(index)).astype(int)
        tilted = crop_face(frames[index], plain.box(index)).astype(int)
        lower = (slice(64, 256), slice(0, 256))
        assert np.abs(upright - expected)[lower].mean() < 0.25 * np.abs(tilted - expected)[lower].mean()


def dub_frames(models, frames, faces, settings, tmp_path, media):
    source = ArraySource(frames, FPS)
    avatar = prepare_avatar(source, models.vae, tmp_path / "avatars", settings, faces=faces)
    audio = load_audio_16k(media / "speech_short.wav")[:16000 * FRAMES // FPS]
    features = compute_audio_features(models.whisper, audio, FPS)
    options = DubOptions(length_policy="trim")
    return avatar, list(lip_sync_frames(source, avatar, features, models.unet, models.vae, options))


def test_turned_face_changes_only_the_pasted_region(tiny_models, clip, tmp_path, media):
    frames, faces = turned(clip, 30)
    avatar, output = dub_frames(tiny_models, frames, faces, AvatarSettings(mask_mode="landmarks", align_roll=5),
                                tmp_path, media)
    assert avatar.track.rotated
    for index, (frame, result) in enumerate(zip(frames, output)):
        xs, ys, xe, ye = avatar._square(index)[1]
        to_frame = cv2.invertAffineTransform(avatar.track.rotation(index))
        square = transform_points(np.array([[xs, ys], [xe, ys], [xe, ye], [xs, ye]]), to_frame)
        region = np.zeros(frame.shape[:2], np.uint8)
        cv2.fillConvexPoly(region, np.round(square).astype(np.int32), 1)
        region = cv2.dilate(region, np.ones((5, 5), np.uint8)).astype(bool)
        changed = np.any(result != frame, axis=2)
        assert changed.any() and not (changed & ~region).any()


def test_untilted_faces_give_the_same_result(tiny_models, clip, tmp_path, media):
    frames, faces = clip  # eye line tilted 7-10 degrees
    faces = [[face] for face in faces]
    official_avatar, official = dub_frames(tiny_models, frames, faces, FAST, tmp_path / "a", media)
    settings = AvatarSettings(mask_mode="landmarks", align_roll=12)
    aligned_avatar, aligned = dub_frames(tiny_models, frames, faces, settings, tmp_path / "b", media)
    assert not aligned_avatar.track.rotated and aligned_avatar.folder != official_avatar.folder
    assert all(np.array_equal(a, b) for a, b in zip(official, aligned))


def test_align_roll_is_part_of_the_cache_key(tiny_models, clip, tmp_path):
    frames, faces = turned(clip, 15)
    source = ArraySource(frames, FPS)
    settings = AvatarSettings(mask_mode="landmarks", align_roll=5)
    upright = prepare_avatar(source, tiny_models.vae, tmp_path, settings, faces=faces)
    plain = prepare_avatar(source, tiny_models.vae, tmp_path, FAST, faces=faces)
    again = prepare_avatar(source, tiny_models.vae, tmp_path, AvatarSettings(mask_mode="landmarks", align_roll=5.0),
                           faces=faces)
    assert upright.folder != plain.folder and again.folder == upright.folder
    assert upright.track.rotated and not plain.track.rotated and again.track.rotated
    assert np.array_equal(again.track.rotations, upright.track.rotations)
    assert not np.array_equal(upright.latents([0]), plain.latents([0]))
    assert np.array_equal(upright.latents([0]), encode_faces(source, upright.track, tiny_models.vae).latents([0]))


def test_align_roll_is_checked():
    with pytest.raises(ValueError, match="align_roll"):
        AvatarSettings(align_roll=-1)


def test_turned_faces_fall_back_to_the_cpu_paste(tiny_models, clip, tmp_path, media):
    frames, faces = turned(clip, 15)
    settings = AvatarSettings(mask_mode="landmarks", align_roll=5)
    source = ArraySource(frames, FPS)
    avatar = prepare_avatar(source, tiny_models.vae, tmp_path, settings, faces=faces)
    features = compute_audio_features(tiny_models.whisper, load_audio_16k(media / "speech_short.wav")[:3200], FPS)
    runs = [list(lip_sync_frames(source, avatar, features, tiny_models.unet, tiny_models.vae,
                                 DubOptions(length_policy="trim", paste_on_device=on_device)))
            for on_device in (True, False)]
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
