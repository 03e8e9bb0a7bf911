"""Video input/output: the decoded-frame cache, read-ahead, and the threaded atomic writer."""

import dataclasses
import os
import socket
import subprocess
import sys
import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from musetalk_lib.bounded_cache import DEFAULT_CACHE_BYTES, BoundedCache
from musetalk_lib.frame_source import VideoFileSource
from musetalk_lib.pipeline import source_frame_indices
from musetalk_lib.read_ahead import ReadAhead
from musetalk_lib.video_io import VideoError, VideoReader, VideoWriter, _Mp4Encoder

CLOSEUP_FRAMES = 45
FRAME_BYTES = 350 * 350 * 3


def sequential_frames(path):
    with VideoReader(path) as reader:
        return list(reader)


def pingpong_batches(num_source, cycles=3, batch_size=8):
    order = source_frame_indices(np.arange(cycles * 2 * num_source), num_source, "pingpong")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir())


def decoded_frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# ------------------------------------------------------------------------------------------ frame cache
def test_bounded_cache_evicts_least_recently_used_within_its_budget():
    frames = [np.full((2, 2, 3), value, np.uint8) for value in range(4)]  # 12 bytes each
    cache = BoundedCache(max_bytes=36)
    for index in range(3):
        cache.put(index, frames[index])
    assert cache.get(0) is frames[0]  # 0 is now the most recently used
    cache.put(3, frames[3])
    assert 1 not in cache and {0, 2, 3} == {i for i in range(4) if i in cache}
    assert cache.nbytes == 36 and len(cache) == 3
    assert cache.capacity(12) == 3


def test_bounded_cache_skips_values_over_budget_and_computes_only_what_it_lacks():
    cache = BoundedCache(max_bytes=10)
    big = np.zeros((2, 2, 3), np.uint8)
    assert cache.put(0, big) is big
    assert 0 not in cache and cache.nbytes == 0
    with pytest.raises(ValueError):
        BoundedCache(-1)
    regions = BoundedCache(max_bytes=8, size_of=len)
    assert regions.get_or_compute("a", lambda: "1234") == "1234"
    assert regions.get_or_compute("a", lambda: "other") == "1234"  # stored: not computed again
    regions.put("b", "5678")
    regions.put("c", "9")
    assert "a" not in regions and regions.nbytes == 5


# ------------------------------------------------------------------------------------------ reading
def test_pingpong_over_a_clip_that_fits_decodes_each_frame_once(media):
    path = media / "talking_closeup.mp4"
    expected = sequential_frames(path)
    source = VideoFileSource(path)
    for batch in pingpong_batches(source.num_frames):
        for index, frame in zip(batch, source.frames(batch)):
            np.testing.assert_array_equal(frame, expected[index])
    assert source.num_frames == CLOSEUP_FRAMES
    assert source.frames_decoded == CLOSEUP_FRAMES
    source.close()


def test_tiny_budget_stays_bounded_reads_windows_and_returns_the_same_frames(media):
    path = media / "talking_closeup.mp4"
    expected = sequential_frames(path)
    decoded = {}
    for budget in (0, 10 * FRAME_BYTES):
        with VideoReader(path, cache_bytes=budget) as reader:
            for batch in pingpong_batches(reader.info.num_frames):
                for index, frame in zip(batch, reader.frames(batch)):
                    np.testing.assert_array_equal(frame, expected[index])
                if reader.cache is not None:
                    assert reader.cache.nbytes <= budget and len(reader.cache) <= 10
            decoded[budget] = reader.frames_decoded
    # Without a cache every backward batch seeks to the clip's only keyframe; windows of 10 cut that down.
    assert decoded[10 * FRAME_BYTES] < 0.75 * decoded[0]


@pytest.mark.parametrize("clip", ["talking_avatar.mp4", "odd_size.mp4"])
@pytest.mark.parametrize("budget_frames", [3, 20, 1000])
def test_random_access_through_the_cache_matches_a_sequential_decode(media, clip, budget_frames):
    path = media / clip
    expected = sequential_frames(path)
    generator = np.random.default_rng(budget_frames)
    with VideoReader(path) as probe:
        frame_bytes = probe.info.width * probe.info.height * 3
    with VideoReader(path, cache_bytes=budget_frames * frame_bytes) as reader:
        for _ in range(25):
            batch = generator.integers(0, len(expected), size=generator.integers(1, 9))
            for index, frame in zip(batch, reader.frames(batch)):
                np.testing.assert_array_equal(frame, expected[index])
            assert reader.cache.nbytes <= reader.cache.max_bytes


def test_cached_frames_are_read_only_and_uncached_ones_writable(media):
    path = media / "talking_closeup.mp4"
    source = VideoFileSource(path)
    frame = source.frames([3])[0]
    assert not frame.flags.writeable
    with pytest.raises(ValueError):
        frame[0, 0] = 0
    assert source.frames([3])[0] is frame
    source.close()
    with VideoReader(path) as reader:
        assert reader.cache is None and reader.frames([3])[0].flags.writeable


@pytest.mark.parametrize("budget", [0, DEFAULT_CACHE_BYTES])
def test_frames_past_a_short_stream_repeat_the_last_frame_on_every_read(media, budget):
    path = media / "talking_closeup.mp4"
    expected = sequential_frames(path)
    with VideoReader(path, cache_bytes=budget) as reader:
        reader.info = dataclasses.replace(reader.info, num_frames=CLOSEUP_FRAMES + 5)  # announced too many
        for batch in ([43, 44, 47], [48, 46], [44, 49], [0, 49]):
            for index, frame in zip(batch, reader.frames(batch)):
                np.testing.assert_array_equal(frame, expected[min(index, CLOSEUP_FRAMES - 1)])


# ------------------------------------------------------------------------------------------ read-ahead
class RecordingSource:
    """A frame source that records which thread reads which batch."""

    def __init__(self, num_frames=40):
        self.num_frames = num_frames
        self.reads = []

    def frames(self, indices):
        if max(indices) >= self.num_frames:
            raise IndexError(f"frame {max(indices)} out of range")
        self.reads.append((threading.current_thread().name, list(indices)))
        return [np.full((2, 2, 3), index, np.uint8) for index in indices]


def test_read_ahead_yields_each_batch_in_order_from_one_worker_thread():
    source = RecordingSource()
    batches = [[0, 1, 2], [5, 4], [9], [3, 3]]
    with ReadAhead(source, batches, depth=2) as read_ahead:
        got = [[int(frame[0, 0, 0]) for frame in frames] for frames in read_ahead]
    assert got == batches
    assert [indices for _, indices in source.reads] == batches
    threads = {name for name, _ in source.reads}
    assert len(threads) == 1 and threads.pop().startswith("musetalk-read")


def test_read_ahead_stays_depth_batches_ahead_and_stops_when_closed():
    source = RecordingSource()
    batches = ([i] for i in range(30))
    with ReadAhead(source, batches, depth=2) as read_ahead:
        next(read_ahead)
    assert len(source.reads) <= 3


def test_read_ahead_raises_the_read_error_for_that_batch():
    with ReadAhead(RecordingSource(num_frames=5), [[0], [7]]) as read_ahead:
        assert next(read_ahead)[0][0, 0, 0] == 0
        with pytest.raises(IndexError):
            next(read_ahead)


# ------------------------------------------------------------------------------------------ writing
def test_threaded_writer_writes_every_frame_and_copies_reused_buffers(tmp_path):
    path = tmp_path / "out.mp4"
    buffer = np.zeros((48, 64, 3), np.uint8)
    levels = [16 * (i % 15) for i in range(40)]
    with VideoWriter(path, 64, 48, 15, queue_frames=2) as writer:
        for level in levels:
            buffer[:] = level  # the caller reuses its buffer as soon as write() returns
            writer.write(buffer)
    assert writer.frames_written == len(levels)
    frames = decoded_frames(path)
    assert len(frames) == len(levels)
    means = [float(frame.mean()) for frame in frames]
    assert np.allclose(means, levels, atol=3)
    assert leftovers(tmp_path) == ["out.mp4"]


def test_encoding_is_byte_identical_whatever_lies_in_memory(tmp_path):
    """Regression: FFmpeg's RGB->YUV conversion of 350-pixel rows read bytes it never wrote, so files differed."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 350, dtype=np.float32)
    frames = [np.clip(ramp[None, :, None] + rng.normal(0, 20, (350, 350, 3)), 0, 255).astype(np.uint8)
              for _ in range(6)]

    def encode(junk_seed: int | None) -> bytes:
        junk = np.random.default_rng(junk_seed)
        path = tmp_path / f"{junk_seed}.mp4"
        encoder = _Mp4Encoder(path, "mp4", (350, 350), Fraction(15), None, None, crf=18, preset="medium")
        for frame in frames:  # on this thread, so that the junk is in the encoder's heap
            if junk_seed is not None:  # leave different bytes in freed memory before every frame
                for _ in range(3):
                    av.VideoFrame.from_ndarray(junk.integers(0, 256, (350, 350, 3), dtype=np.uint8), format="rgb24")
            encoder.encode(frame)
        encoder.finish()
        return path.read_bytes()

    first = encode(None)
    assert all(encode(seed) == first for seed in range(1, 9))


def test_the_stream_states_its_colour_matrix_and_range(tmp_path):
    path = tmp_path / "tagged.mp4"
    with VideoWriter(path, 64, 48, 15) as writer:
        writer.write(np.full((48, 64, 3), 128, np.uint8))
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context
        assert (int(codec.colorspace), int(codec.color_range)) == (6, 1)  # BT.601 (SMPTE 170M), limited range


def test_writer_with_audio_and_odd_size(tmp_path):
    path = tmp_path / "odd.mp4"
    audio = np.zeros((1, 16000), np.float32)
    with VideoWriter(path, 35, 27, 15, audio, 16000) as writer:
        for _ in range(15):
            writer.write(np.full((27, 35, 3), 100, np.uint8))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 15 and container.streams.audio


def test_exception_inside_the_with_block_leaves_no_file(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="model failed"):
        with VideoWriter(path, 64, 48, 15) as writer:
            for _ in range(10):
                writer.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("model failed")
    assert leftovers(tmp_path) == []


def test_abort_deletes_the_partial_file_and_closes_the_writer(tmp_path):
    writer = VideoWriter(tmp_path / "out.mp4", 64, 48, 15)
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.abort()
    assert leftovers(tmp_path) == []
    with pytest.raises(VideoError, match="closed"):
        writer.write(np.zeros((48, 64, 3), np.uint8))


def test_encoder_error_surfaces_from_close_and_leaves_no_file(tmp_path):
    path = tmp_path / "out.mp4"
    writer = VideoWriter(path, 64, 48, 15, preset="no-such-preset")
    writer.write(np.zeros((48, 64, 3), np.uint8))  # accepted: the encoder fails on its thread
    with pytest.raises(VideoError, match="Encoding .* failed") as raised:
        writer.close()
    assert isinstance(raised.value.__cause__, av.FFmpegError)
    assert leftovers(tmp_path) == []


def test_encoder_error_stops_a_with_block_and_leaves_no_file(tmp_path):
    with pytest.raises(VideoError, match="Encoding .* failed"):
        with VideoWriter(tmp_path / "out.mp4", 64, 48, 15, preset="no-such-preset") as writer:
            for _ in range(50):
                writer.write(np.zeros((48, 64, 3), np.uint8))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("frame", "message"), [(np.zeros((48, 60, 3), np.uint8), "writer expects 64x48"),
                                                (np.zeros((48, 64, 3), np.float32), "must be uint8")])
def test_write_refuses_a_wrong_frame_at_once(tmp_path, frame, message):
    with pytest.raises(VideoError, match=message):
        with VideoWriter(tmp_path / "out.mp4", 64, 48, 15) as writer:
            writer.write(frame)
    assert leftovers(tmp_path) == []


def test_a_writer_removes_partial_files_of_its_output_left_by_dead_processes_on_this_machine(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    abandoned = [tmp_path / f".out.{host}-{dead.pid}.partial.mp4", tmp_path / f".out.{dead.pid}.partial.mp4"]
    kept = [tmp_path / f".out.{host}-{os.getppid()}.partial.mp4",  # a live process
            tmp_path / f".out.other-host-{dead.pid}.partial.mp4",  # another machine on a shared folder
            tmp_path / f".other.{host}-{dead.pid}.partial.mp4"]  # another output
    for path in abandoned + kept:
        path.write_bytes(b"partial")
    with VideoWriter(tmp_path / "out.mp4", 64, 48, 15) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
    assert sorted(leftovers(tmp_path)) == sorted(["out.mp4", *(path.name for path in kept)])


@pytest.mark.parametrize("name, container", [("out.mov", "mov"), ("out.m4v", "mp4")])
def test_the_container_follows_the_extension(tmp_path, name, container):
    with VideoWriter(tmp_path / name, 64, 48, 15) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
    with av.open(str(tmp_path / name)) as opened:
        assert container in opened.format.name.split(",")


def test_an_unsupported_extension_is_refused_before_writing(tmp_path):
    with pytest.raises(VideoError, match=r"\.mp4"):
        VideoWriter(tmp_path / "out.avi", 64, 48, 15)
    assert leftovers(tmp_path) == []
