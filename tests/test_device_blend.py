"""The torch crop and paste (``device_blend``) against the numpy/OpenCV ones, on CPU tensors."""


import numpy as np
import pytest
import torch

from musetalk_lib.blending import blend_alpha, expanded_square, landmark_mask, paste_face
from musetalk_lib.crop import V15_EXTRA_MARGIN, crop_face, official_face_box, resize_face_to_box
from musetalk_lib.device_blend import crop_faces, paste_faces
from musetalk_lib.faces import load_landmarks_json
from musetalk_lib.video_io import VideoReader
from media_dir import MEDIA

FRAMES = [0, 9, 18, 27, 36, 44]

# Boxes in a 97x131 frame (H x W): tiny and odd (enlarged), past the right/bottom edge
# (cut), exactly half the face size, and squares leaving the frame on every side.
SMALL_FRAME_BOXES = [(3, 2, 10, 7), (17, 3, 40, 31), (100, 60, 140, 110), (0, 0, 128, 97),
                     (50, 20, 82, 52), (120, 90, 131, 97), (1, 40, 26, 95)]
# Boxes in a 333x311 frame: larger than the face (shrunk), odd, 256 wide, touching corners.
LARGE_FRAME_BOXES = [(5, 7, 306, 330), (0, 0, 311, 333), (20, 40, 276, 296), (41, 3, 300, 290),
                     (150, 160, 311, 333)]


def max_and_mean(actual: torch.Tensor, expected: np.ndarray) -> tuple[int, float]:
    """Largest and mean absolute difference in grey levels."""
    difference = np.abs(actual.numpy().astype(np.int64) - expected.astype(np.int64))
    return int(difference.max()), float(difference.mean())


@pytest.fixture(scope="module")
def real():
    """Frames of the close-up clip with v1.5 boxes, squares and landmark-mask alphas."""
    with VideoReader(MEDIA / "talking_closeup.mp4") as reader:
        frames = [np.ascontiguousarray(frame) for frame in reader.frames(FRAMES)]
    faces = load_landmarks_json(MEDIA / "landmarks" / "talking_closeup.json")
    landmarks = [faces[index][0].landmarks for index in FRAMES]
    height = frames[0].shape[0]
    boxes = [official_face_box(points, height, extra_margin=V15_EXTRA_MARGIN) for points in landmarks]
    squares = [expanded_square(box) for box in boxes]
    alphas = [blend_alpha(landmark_mask(points, square), box, square)
              for points, box, square in zip(landmarks, boxes, squares)]
    return frames, boxes, squares, alphas


def noise_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Worst case for the resize: independent random pixels (maximal Lanczos overshoot)."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_crop_matches_opencv_on_real_frames(real):
    frames, boxes, _, _ = real
    expected = np.stack([crop_face(frame, box) for frame, box in zip(frames, boxes)])
    got = crop_faces(torch.from_numpy(np.stack(frames)), boxes)
    assert got.shape == (len(frames), 256, 256, 3) and got.dtype == torch.uint8
    worst, mean = max_and_mean(got, expected)
    assert worst <= 1 and mean < 0.01  # identical to SIMD OpenCV builds (x86, ARM NEON)


@pytest.mark.parametrize("shape, boxes", [((97, 131), SMALL_FRAME_BOXES), ((333, 311), LARGE_FRAME_BOXES)])
def test_crop_matches_opencv_up_and_down(shape, boxes):
    frames = noise_frames(len(boxes), *shape, seed=1)
    expected = np.stack([crop_face(frame, box) for frame, box in zip(frames, boxes)])
    worst, mean = max_and_mean(crop_faces(torch.from_numpy(frames), boxes), expected)
    assert worst <= 1 and mean < 0.01


def test_crop_takes_frames_of_different_sizes():
    small, large = noise_frames(1, 97, 131, seed=2)[0], noise_frames(1, 333, 311, seed=3)[0]
    boxes = [SMALL_FRAME_BOXES[1], LARGE_FRAME_BOXES[0]]
    got = crop_faces([torch.from_numpy(small), torch.from_numpy(large)], boxes, size=64)
    expected = np.stack([crop_face(small, boxes[0], 64), crop_face(large, boxes[1], 64)])
    assert max_and_mean(got, expected)[0] <= 1


def test_crop_rejects_bad_input():
    frames = torch.zeros((1, 50, 60, 3), dtype=torch.uint8)
    for box in [(10, 10, 10, 20), (-1, 0, 20, 20), (70, 0, 80, 20)]:
        with pytest.raises(ValueError, match="empty"):
            crop_faces(frames, [box])
    with pytest.raises(ValueError, match="boxes"):
        crop_faces(frames, [])
    with pytest.raises(ValueError, match="uint8"):
        crop_faces(frames.float(), [(0, 0, 10, 10)])
    assert crop_faces(frames[:0], []).shape == (0, 256, 256, 3)


def check_paste(frames: np.ndarray, faces: np.ndarray, boxes, squares, alphas) -> tuple[int, float]:
    """Paste with both versions; pixels outside each square must be bit-identical to the input."""
    expected = np.stack([paste_face(*args) for args in zip(frames, faces, boxes, squares, alphas)])
    tensor = torch.from_numpy(frames.copy())
    assert paste_faces(tensor, torch.from_numpy(faces), boxes, squares, alphas) is tensor  # in place
    for frame, pasted, (xs, ys, xe, ye) in zip(frames, tensor.numpy(), squares):
        outside = np.ones(frame.shape[:2], bool)
        outside[max(ys, 0):max(ye, 0), max(xs, 0):max(xe, 0)] = False
        assert np.array_equal(pasted[outside], frame[outside])
    return max_and_mean(tensor, expected)


def test_paste_matches_opencv_on_real_frames(real):
    frames, boxes, squares, alphas = real
    faces = np.stack([crop_face(frame, box) for frame, box in zip(frames, boxes)])[::-1].copy()
    worst, mean = check_paste(np.stack(frames), faces, boxes, squares, alphas)
    assert worst <= 1 and mean < 0.01


@pytest.mark.parametrize("shape, boxes", [((97, 131), SMALL_FRAME_BOXES), ((333, 311), LARGE_FRAME_BOXES)])
def test_paste_matches_opencv_up_and_down(shape, boxes):
    frames = noise_frames(len(boxes), *shape, seed=4)
    faces = noise_frames(len(boxes), 256, 256, seed=5)
    squares = [expanded_square(box) for box in boxes]
    rng = np.random.default_rng(6)
    alphas = [rng.integers(0, 256, (ye - ys, xe - xs), dtype=np.uint8) for xs, ys, xe, ye in squares]
    worst, mean = check_paste(frames, faces, boxes, squares, alphas)
    assert worst <= 1 and mean < 0.01


def test_opaque_paste_is_the_opencv_bilinear_resize():
    frames = noise_frames(3, 333, 311, seed=7)
    faces = noise_frames(3, 256, 256, seed=8)
    boxes = [(10, 20, 139, 147), (0, 0, 311, 333), (40, 50, 168, 178)]  # enlarged, shrunk, exactly 2x smaller
    squares = [expanded_square(box) for box in boxes]
    alphas = [np.full((ye - ys, xe - xs), 255, np.uint8) for xs, ys, xe, ye in squares]
    pasted = paste_faces(torch.from_numpy(frames.copy()), torch.from_numpy(faces), boxes, squares, alphas)
    for frame, face, (x1, y1, x2, y2) in zip(pasted, faces, boxes):
        worst, mean = max_and_mean(frame[y1:y2, x1:x2], resize_face_to_box(face, (x1, y1, x2, y2)))
        assert worst <= 1 and mean < 0.01


def test_paste_into_a_list_of_frames_in_place(real):
    frames, boxes, squares, alphas = real
    tensors = [torch.from_numpy(frames[0].copy()), torch.from_numpy(np.ascontiguousarray(frames[1][:300, :320]))]
    face = torch.full((1, 256, 256, 3), 200, dtype=torch.uint8)
    result = paste_faces(tensors, face.expand(2, -1, -1, -1), boxes[:2], squares[:2],
                         [torch.from_numpy(alpha) for alpha in alphas[:2]])
    assert result is tensors
    for tensor, frame, box, square, alpha in zip(tensors, frames, boxes, squares, alphas):
        expected = paste_face(frame[:tensor.shape[0], :tensor.shape[1]], face[0].numpy(), box, square, alpha)
        assert max_and_mean(tensor, expected)[0] <= 1


def test_paste_rejects_bad_input():
    frames = torch.zeros((1, 50, 60, 3), dtype=torch.uint8)
    faces = torch.zeros((1, 256, 256, 3), dtype=torch.uint8)
    box, square = (10, 10, 30, 30), expanded_square((10, 10, 30, 30))
    with pytest.raises(ValueError, match="alpha"):
        paste_faces(frames, faces, [box], [square], [np.zeros((5, 5), np.uint8)])
    with pytest.raises(ValueError, match="alpha"):
        paste_faces(frames, faces, [box], [square], [np.zeros((30, 30), np.float32)])
    with pytest.raises(ValueError, match="alphas"):
        paste_faces(frames, faces, [box], [square], [])
    with pytest.raises(ValueError, match="faces"):
        paste_faces(frames, faces.float(), [box], [square], [np.zeros((30, 30), np.uint8)])
