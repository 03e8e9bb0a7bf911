"""Crop geometry and blending beyond what the golden cases pin down."""

import json

import cv2
import numpy as np
import pytest

from musetalk_lib.blending import (
    blend_alpha,
    blur_kernel_size,
    crop_with_padding,
    expanded_square,
    first_pasted_face_row,
    landmark_mask,
    parsing_mask,
    paste_face,
)
from musetalk_lib.crop import add_bottom_margin, crop_face, face_box_from_landmarks, official_face_box
from media_dir import MEDIA



@pytest.fixture(scope="module")
def landmarks():
    """Real 68-point landmarks of the first frame of the still test image."""
    data = json.loads((MEDIA / "landmarks" / "face_still.json").read_text())
    return np.array(data["frames"][0]["faces"][0]["landmarks"], dtype=np.float64)


def test_box_is_symmetric_about_the_shifted_nose_bridge(landmarks):
    for shift in (0, -7, 5):
        x1, y1, x2, y2 = face_box_from_landmarks(landmarks, shift)
        nose = int(landmarks[29, 1]) + shift
        if y1 > 0:
            assert nose - y1 == y2 - nose
        assert (x1, x2) == (int(landmarks[:, 0].min()), int(landmarks[:, 0].max()))


def test_degenerate_landmarks_fall_back(landmarks):
    flat = landmarks.copy()
    flat[:, 0] = 10
    assert face_box_from_landmarks(flat) is None
    assert official_face_box(flat, 300, fallback=(1, 2, 3, 4)) == (1, 2, 3, 4)
    left = landmarks.copy()
    left[0, 0] = -3
    assert face_box_from_landmarks(left) is None


def test_margin_is_clipped_to_the_frame():
    assert add_bottom_margin((0, 0, 10, 95), 10, 100) == (0, 0, 10, 100)
    assert add_bottom_margin((0, 0, 10, 50), 10, 100) == (0, 0, 10, 60)


def test_crop_is_256_square_and_rejects_empty_boxes():
    frame = np.zeros((100, 120, 3), np.uint8)
    assert crop_face(frame, (10, 20, 60, 90)).shape == (256, 256, 3)
    with pytest.raises(ValueError, match="empty"):
        crop_face(frame, (50, 50, 50, 60))


def test_landmark_mask_covers_the_lower_face_but_not_the_nose(landmarks):
    box = official_face_box(landmarks, 350)
    square = expanded_square(box)
    mask = landmark_mask(landmarks, square)
    assert mask.shape == (512, 512) and set(np.unique(mask)) == {0, 255}
    scale = 512 / (square[2] - square[0])

    def at(point):
        x, y = (np.asarray(point) - square[:2]) * scale
        return mask[int(y), int(x)]

    assert at(landmarks[57] + (0, -3)) == 255  # lower lip
    assert at((landmarks[48] + landmarks[4]) / 2) == 255  # cheek beside the mouth
    assert at(landmarks[30]) == 0  # nose tip
    assert at((square[0] + 2, square[1] + 2)) == 0  # outside the face


def test_unknown_modes_are_rejected():
    with pytest.raises(ValueError, match="jaw"):
        parsing_mask(np.zeros((512, 512), np.uint8), "mouth")
    with pytest.raises(ValueError, match="realtime"):
        blur_kernel_size(300, "fast")


def test_blur_kernels_are_odd_and_scale_with_the_square():
    assert blur_kernel_size(300, "normal") == 15 and blur_kernel_size(300, "realtime") == 31
    assert all(blur_kernel_size(side) % 2 == 1 for side in range(2, 700))


@pytest.fixture
def scene():
    generator = np.random.default_rng(0)
    frame = generator.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    face = generator.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    box = (60, 40, 160, 170)
    return frame, face, box, expanded_square(box)


def test_paste_changes_nothing_outside_the_square(scene):
    frame, face, box, square = scene
    alpha = blend_alpha(np.full((512, 512), 255, np.uint8), box, square)
    out = paste_face(frame, face, box, square, alpha)
    outside = np.ones(frame.shape[:2], bool)
    outside[max(square[1], 0):square[3], max(square[0], 0):square[2]] = False
    assert np.array_equal(out[outside], frame[outside])
    assert not np.array_equal(out, frame)


def test_alpha_zero_and_full(scene):
    frame, face, box, square = scene
    side = square[2] - square[0]
    assert np.array_equal(paste_face(frame, face, box, square, np.zeros((side, side), np.uint8)), frame)
    full = paste_face(frame, face, box, square, np.full((side, side), 255, np.uint8))
    x1, y1, x2, y2 = box
    assert np.array_equal(full[y1:y2, x1:x2], cv2.resize(face, (x2 - x1, y2 - y1)))


def test_alpha_is_limited_to_the_lower_half_of_the_box(scene):
    _, _, box, square = scene
    alpha = blend_alpha(np.full((512, 512), 255, np.uint8), box, square, "normal")
    side = square[2] - square[0]
    kernel = blur_kernel_size(side)
    rows = np.nonzero(alpha.any(axis=1))[0]
    assert rows.min() >= side // 2 - kernel // 2
    assert rows.max() <= box[3] - square[1] + kernel // 2


def reference_paste(frame, face, box, square, alpha):
    """The official composite, computed over the whole square in wide integers."""
    x1, y1, x2, y2 = box
    xs, ys, xe, ye = square
    face_large = crop_with_padding(frame, square)
    face_large[y1 - ys:y2 - ys, x1 - xs:x2 - xs] = cv2.resize(face, (x2 - x1, y2 - y1))
    fx1, fy1, fx2, fy2 = max(xs, 0), max(ys, 0), min(xe, frame.shape[1]), min(ye, frame.shape[0])
    a = alpha[fy1 - ys:fy2 - ys, fx1 - xs:fx2 - xs, None].astype(np.uint32)
    mixed = frame[fy1:fy2, fx1:fx2].astype(np.uint32) * (255 - a) + face_large[fy1 - ys:fy2 - ys, fx1 - xs:fx2 - xs] * a
    out = frame.copy()
    out[fy1:fy2, fx1:fx2] = ((mixed + 128 + ((mixed + 128) >> 8)) >> 8).astype(np.uint8)
    return out


@pytest.mark.parametrize("box", [(60, 40, 160, 170), (0, 0, 90, 120), (150, 90, 240, 200), (5, 150, 60, 200)])
@pytest.mark.parametrize("variant", ["normal", "realtime"])
def test_paste_equals_the_official_composite_over_the_whole_square(scene, box, variant):
    frame, face, _, _ = scene
    square = expanded_square(box)
    mask = np.random.default_rng(4).integers(0, 2, (512, 512), dtype=np.uint8) * 255
    alpha = blend_alpha(mask, box, square, variant)
    assert np.array_equal(paste_face(frame, face, box, square, alpha), reference_paste(frame, face, box, square, alpha))


@pytest.mark.parametrize("box", [(60, 40, 160, 170), (20, 10, 230, 60), (100, 5, 130, 195), (0, 100, 40, 200)])
@pytest.mark.parametrize("variant", ["normal", "realtime"])
def test_face_rows_above_the_first_pasted_row_never_show(scene, box, variant):
    frame, face, _, _ = scene
    square = expanded_square(box)
    alpha = blend_alpha(np.full((512, 512), 255, np.uint8), box, square, variant)
    first = first_pasted_face_row(box, square, variant)
    assert 0 < first < 128
    garbled = face.copy()
    garbled[:first] = 255 - garbled[:first]
    assert np.array_equal(paste_face(frame, garbled, box, square, alpha), paste_face(frame, face, box, square, alpha))
    # Tight up to the blur's rounding: its faint tail rounds to 0 in uint8.
    first_box_row = square[1] + int(np.flatnonzero(alpha.any(axis=1))[0]) - box[1]
    scale = 256 / (box[3] - box[1])
    assert first <= (first_box_row + 0.5) * scale - 0.5 <= first + 2 * scale + 1
