"""Reference selection (SIS and the ablation strategies) on hand-made landmark sequences.

Every frame gets a "pose" value that shifts all 16 jaw points sideways and a
"mouth" value that shifts the inner-lip points down; the jaw distance between
two frames is then exactly the difference of their pose values, the inner-lip
distance the difference of their mouth values.
"""

import numpy as np
import pytest

from training.sampling import ReferenceSampler, landmarks_in_crop, top_k_count

pytestmark = pytest.mark.usefixtures("repository_root")  # configs use repository-relative paths


def sequence(pose, mouth) -> np.ndarray:
    points = np.tile(np.linspace(20.0, 200.0, 68)[:, None], (len(pose), 1, 2))  # distinct, frame-independent
    points[:, 0:16, 0] += np.asarray(pose, dtype=float)[:, None]
    points[:, 60:67, 1] += np.asarray(mouth, dtype=float)[:, None]
    return points


# Target 0: nearest poses are frames 1, 3, 5, 7; most different mouths are 9, 8, 7, 5.
POSE = [0, 0.1, 5, 0.2, 6, 0.3, 7, 0.4, 8, 9]
MOUTH = [0, 0.1, 0.2, 0.3, 0.4, 5, 0.5, 6, 7, 8]


def draws(sampler: ReferenceSampler, target: int, count: int = 300) -> set[int]:
    rng = np.random.default_rng(0)
    return {sampler.sample(target, rng) for _ in range(count)}


def test_top_k_is_a_truncated_fraction_of_the_clip():
    assert top_k_count(10, 0.4) == 4
    assert top_k_count(10, 0.51) == 5
    assert top_k_count(750, 0.51) == 382
    with pytest.raises(ValueError):
        top_k_count(10, 0.0)


def test_pose_and_lip_lists_and_their_intersection():
    sampler = ReferenceSampler(sequence(POSE, MOUTH), "sis", top_k_ratio=0.4)
    assert sampler.pose_aligned(0).tolist() == [1, 3, 5, 7]  # nearest first, the target itself excluded
    assert sampler.lip_dissimilar(0).tolist() == [9, 8, 7, 5]  # most different first
    assert sampler.candidates(0).tolist() == [5, 7]
    assert draws(sampler, 0) == {7}  # paper: frame 5 is a +-5 neighbour of the target
    official = ReferenceSampler(sequence(POSE, MOUTH), "sis", top_k_ratio=0.4, selection="official")
    assert draws(official, 0) == {5, 7}  # official: both candidates are >= 5 frames away, no redraw


@pytest.mark.parametrize("strategy, expected, picks", [
    ("pose", [1, 3, 5, 7], {0, 5, 7}),
    ("mouth", [5, 7, 8, 9], {5, 7, 8, 9}),
    ("random", [1, 2, 3, 4, 5, 6, 7, 8, 9], {0, 5, 6, 7, 8, 9}),
])
def test_official_ablation_strategies(strategy, expected, picks):
    sampler = ReferenceSampler(sequence(POSE, MOUTH), strategy, top_k_ratio=0.4, selection="official")
    assert sampler.candidates(0).tolist() == expected
    # Candidates closer than 5 frames are redrawn from [-5, 5] until 5 frames away: -5 or 5; the clamp
    # to the clip turns -5 into frame 0 (the official behaviour at clip edges).
    assert draws(sampler, 0) == picks


def test_official_empty_intersection_falls_back_to_the_window_edges():
    # Pose and mouth grow together: the nearest poses never have the most different mouths.
    ramp = np.arange(20.0)
    sampler = ReferenceSampler(sequence(ramp, ramp), "sis", top_k_ratio=0.2, selection="official")
    assert sorted(sampler.pose_aligned(10).tolist()) == [8, 9, 11, 12]  # distances 1, 1, 2, 2
    assert sorted(sampler.lip_dissimilar(10).tolist()) == [0, 1, 2, 19]  # distances 10, 9, 9, 8
    assert sampler.candidates(10).size == 0
    assert sampler.fallback_window(10) == (5, 15)
    assert draws(sampler, 10) == {5, 15}  # uniform in [5, 15], redrawn while closer than 5 frames


def test_official_fallback_is_clamped_to_the_clip():
    ramp = np.arange(20.0)
    sampler = ReferenceSampler(sequence(ramp, ramp), "sis", top_k_ratio=0.2, selection="official")
    assert sampler.candidates(1).size == 0
    assert draws(sampler, 1) == {0, 6}  # window [-4, 6]: -4 is clamped to frame 0


def test_official_fallback_window_scales_with_the_frames_per_sample():
    ramp = np.arange(40.0)
    sampler = ReferenceSampler(sequence(ramp, ramp), "sis", top_k_ratio=0.1, sample_frames=2, selection="official")
    assert sampler.fallback_window(20) == (10, 30)
    picks = draws(sampler, 20)
    assert picks <= set(range(10, 16)) | set(range(25, 31)) and len(picks) > 4


def test_official_candidate_too_close_is_redrawn_from_the_window():
    # Target 0: the only pose-aligned and lip-dissimilar frame is 2, closer than min_gap.
    pose = [0, 9, 0.1, 9, 9, 9, 9, 9, 9, 9]
    mouth = [0, 0, 9, 0, 0, 0, 0, 0, 0, 0]
    sampler = ReferenceSampler(sequence(pose, mouth), "sis", top_k_ratio=0.1, selection="official")
    assert sampler.candidates(0).tolist() == [2]
    assert draws(sampler, 0) == {0, 5}  # window [-5, 5] edges, -5 clamped to 0


@pytest.mark.parametrize("strategy", ["sis", "pose", "mouth", "random"])
@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.51])
def test_paper_references_never_touch_the_target_or_its_neighbours(strategy, ratio):
    rng = np.random.default_rng(1)
    landmarks = sequence(rng.normal(size=30), rng.normal(size=30))
    sampler = ReferenceSampler(landmarks, strategy, top_k_ratio=ratio)
    for target in range(30):  # including both clip edges
        picks = draws(sampler, target, 40)
        assert all(abs(pick - target) > 5 for pick in picks), (target, picks)
        candidates = set(sampler.candidates(target).tolist()) - set(range(target - 5, target + 6))
        if candidates:  # from the candidate set whenever it has an eligible frame
            assert picks <= candidates


def test_paper_fallback_is_the_nearest_eligible_poses():
    # Pose and mouth grow together: the intersection is empty; the eligible frames nearest in pose to
    # target 10 are 4 and 16 (distance 6), then 3 and 17: the top_k = 4 of them.
    ramp = np.arange(20.0)
    sampler = ReferenceSampler(sequence(ramp, ramp), "sis", top_k_ratio=0.2)
    assert sampler.candidates(10).size == 0
    assert sampler.paper_choices(10).tolist() == [3, 4, 16, 17]
    assert draws(sampler, 10) == {3, 4, 16, 17}


def test_paper_fallback_at_a_clip_edge_and_with_a_near_candidate():
    # Target 0: the only SIS candidate is frame 2, a neighbour; the eligible frames are 6..9, nearest pose 6.
    pose = [0, 9, 0.1, 9, 9, 9, 8, 9, 9, 9]
    mouth = [0, 0, 9, 0, 0, 0, 0, 0, 0, 0]
    sampler = ReferenceSampler(sequence(pose, mouth), "sis", top_k_ratio=0.1)
    assert sampler.candidates(0).tolist() == [2]
    assert draws(sampler, 0) == {6}
    assert sampler.candidates(9).size == 0 and draws(sampler, 9) == {1}  # eligible 0..3, nearest pose 1 (9 vs 9)


def test_paper_selection_in_a_clip_too_short_for_the_gap_takes_the_farthest_frames():
    sampler = ReferenceSampler(sequence(np.arange(8.0), np.zeros(8)), "sis", top_k_ratio=0.5)
    assert sampler.eligible(3).size == 0 and sampler.eligible(0).tolist() == [6, 7]
    assert draws(sampler, 3) == {7}  # 4 frames away (frame 0 is only 3)
    assert draws(sampler, 0) == {6, 7}  # the SIS candidates 1..4 are all neighbours: nearest eligible poses
    with pytest.raises(ValueError, match="2 frames"):
        ReferenceSampler(sequence([0.0], [0.0]))


def test_landmarks_are_scaled_into_each_crop():
    landmarks = np.zeros((2, 68, 2))
    landmarks[:, :, 0], landmarks[:, :, 1] = 60.0, 70.0
    boxes = np.array([[10, 20, 110, 120], [10, 20, 60, 220]])
    crop = landmarks_in_crop(landmarks, boxes)
    assert crop[0, 0].tolist() == [128.0, 128.0]
    assert crop[1, 0].tolist() == [256.0, 64.0]


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="strategy"):
        ReferenceSampler(sequence(POSE, MOUTH), "nearest")
    with pytest.raises(ValueError, match="selection"):
        ReferenceSampler(sequence(POSE, MOUTH), selection="redraw")
