"""Video and image input/output with PyAV (FFmpeg libraries bundled; no ffmpeg binary needed).

Frames are RGB ``uint8`` arrays ``[H, W, 3]``. Reading streams frame by frame
(with seeking for random access), so long videos never sit in memory; an
optional byte-bounded cache keeps recently decoded frames so that reading them
again (ping-pong playback) does not decode them again. Writing produces H.264
(yuv420p) + AAC MP4 on an encoder thread, under a temporary name that is
renamed only once the file is complete.
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import re
import shutil
import socket
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from .audio_io import downmix_to_stereo
from .cache_folder import process_running
from .bounded_cache import BoundedCache

__all__ = [
    "IMAGE_SUFFIXES",
    "OUTPUT_CONTAINERS",
    "VideoError",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "even_size",
    "is_image_path",
    "read_image",
    "remove_abandoned_partials",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class VideoError(ValueError):
    """A video or image could not be read or written."""


def is_image_path(path: str | os.PathLike) -> bool:
    """True for still-image file names (by extension)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Greyscale ``[H, W]``/``[H, W, 1]`` or RGBA ``[H, W, 4]`` -> RGB ``[H, W, 3]`` (alpha dropped)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise VideoError(f"Expected an image [H, W, 1|3|4], got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Load a still image as RGB ``uint8``; greyscale, palette, 16-bit and RGBA inputs are converted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float64)
                scale = 255.0 / 65535.0 if pixels.max() > 255 else 1.0
                return to_rgb(np.clip(pixels * scale + 0.5, 0, 255).astype(np.uint8))
            return to_rgb(np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB")))
    except OSError as error:
        raise VideoError(f"Cannot read image {path}: {error}") from error


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a video stream."""

    width: int
    height: int
    fps: float
    frame_rate: Fraction
    num_frames: int
    has_audio: bool

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


class VideoReader:
    """Streams RGB frames from a video file; ``frames(indices)`` gives random access.

    Use as a context manager, iterate for all frames in order, or ask for
    arbitrary frame numbers (sequential runs decode forward, going back seeks
    to a keyframe and decodes forward from there).

    With ``cache_bytes > 0`` the frames decoded by :meth:`frames` are kept in
    a :class:`~musetalk_lib.bounded_cache.BoundedCache` of that many bytes, so
    frames read again (a ping-pong cycle that fits) are decoded once. A read
    that has to go back decodes a whole window ending at the requested frames,
    as many frames as the cache holds, so the backward reads that follow find
    their frames cached instead of seeking for every batch. Frames from a
    reader with a cache are read-only: copy one before changing it.
    ``frames_decoded`` counts the frames the decoder has produced.
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Video not found: {self.path}")
        if self.path.stat().st_size == 0:
            raise VideoError(f"The video {self.path} is empty (0 bytes).")
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as error:
            raise VideoError(f"Cannot open video {self.path}: it is not a video FFmpeg can read, or it is truncated "
                             f"or corrupt ({error.strerror or error}).") from error
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path} has no video stream.")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self.info = self._probe()
        self.cache = BoundedCache(cache_bytes) if cache_bytes > 0 else None
        self.frames_decoded = 0
        self._decoder: Iterator | None = None
        self._next_index = 0
        self._short_stream_reported = False

    def _probe(self) -> VideoInfo:
        stream = self._stream
        frame_rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not frame_rate or frame_rate <= 0:
            raise VideoError(f"{self.path}: cannot determine the frame rate.")
        num_frames = stream.frames or self._count_packets()
        if num_frames <= 0:
            raise VideoError(f"{self.path} contains no video frames.")
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(frame_rate),
            frame_rate=Fraction(frame_rate),
            num_frames=num_frames,
            has_audio=bool(self._container.streams.audio),
        )

    def _count_packets(self) -> int:
        count = sum(1 for packet in self._container.demux(self._stream) if packet.size)
        self._container.seek(0)
        return count

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __len__(self) -> int:
        return self.info.num_frames

    def _frame_index(self, frame: av.VideoFrame) -> int:
        if frame.pts is None:
            return self._next_index
        start = self._stream.start_time or 0
        return round(float((frame.pts - start) * self._stream.time_base) * self.info.fps)

    def _decode_from(self, index: int) -> None:
        """Position the decoder so that the next decoded frame is ``index`` (or the first one before it)."""
        if index == 0 or index < self._next_index or index - self._next_index > 2 * max(8, round(self.info.fps)):
            start = self._stream.start_time or 0
            target = start + int(index / self.info.fps / self._stream.time_base) if index else start
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            self._decoder = None
        if self._decoder is None:
            self._decoder = self._container.decode(self._stream)
            self._next_index = -1  # unknown until a frame arrives

    def _next_frame(self) -> tuple[int, av.VideoFrame] | None:
        """The next decoded frame and its index; ``None`` at the end of the stream (the next read then seeks)."""
        try:
            frame = next(self._decoder)
        except StopIteration:
            self._decoder, self._next_index = None, self.info.num_frames
            return None
        except av.FFmpegError as error:
            raise VideoError(f"{self.path}: decoding failed ({error}); the file may be truncated or corrupt.") from error
        self.frames_decoded += 1
        index = self._frame_index(frame) if self._next_index < 0 else self._next_index
        self._next_index = index + 1
        return index, frame

    def _read_range(self, target: int, pending: Sequence[int]) -> tuple[int, int]:
        """``(first, last)``: keep the decoded frames from ``first`` on and stop once ``last`` is decoded.

        ``target`` is the first of the ``pending`` (ascending) frames. Going
        back with a cache, the range is the cache's capacity and ends at the
        last pending frame within it; otherwise it is just ``target``.
        """
        window = self.cache.capacity(self.info.width * self.info.height * 3) if self.cache is not None else 0
        if window <= 1 or target >= self._next_index:
            return target, target
        last = max(index for index in pending if index < target + window)
        return max(0, last - window + 1), last

    def _keep(self, index: int, frame: av.VideoFrame) -> np.ndarray:
        """The RGB pixels of a decoded frame, stored in the cache (converted only if not cached already)."""
        if self.cache is None:
            return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
        cached = self.cache.get(index)
        if cached is not None:
            return cached
        pixels = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
        pixels.setflags(write=False)  # every caller asking for this index gets this same array
        return self.cache.put(index, pixels)

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Frames at ``indices`` (any order, repeats allowed); read-only when the reader has a cache."""
        wanted = sorted(set(int(i) for i in indices))
        if wanted and (wanted[0] < 0 or wanted[-1] >= self.info.num_frames):
            raise IndexError(f"Frame indices must be in [0, {self.info.num_frames}), got {wanted[0]}..{wanted[-1]}")
        found: dict[int, np.ndarray] = {}
        if self.cache is not None:
            found = {index: frame for index in wanted if (frame := self.cache.get(index)) is not None}
        pending = deque(index for index in wanted if index not in found)
        last_frame: np.ndarray | None = None
        last_skipped: tuple[int, av.VideoFrame] | None = None
        while pending:
            first, last = self._read_range(pending[0], pending)
            self._decode_from(first)
            while pending and pending[0] <= last:
                decoded = self._next_frame()
                if decoded is None:  # stream shorter than announced: repeat the last frame
                    if last_skipped is not None:  # the last decoded frame was lead-in: convert it now
                        last_frame = self._keep(*last_skipped)
                    if last_frame is None:
                        raise VideoError(f"{self.path}: frame {pending[0]} could not be decoded.")
                    self._report_short_stream(pending[0])
                    while pending:
                        index = pending.popleft()
                        found[index] = self.cache.put(index, last_frame) if self.cache is not None else last_frame
                    break
                index, frame = decoded
                if index < first:  # lead-in from the keyframe: decoded, never converted
                    last_skipped = decoded
                    continue
                last_frame, last_skipped = self._keep(index, frame), None
                while pending and pending[0] <= index:
                    found[pending.popleft()] = last_frame
        return [found[int(i)] for i in indices]

    def _report_short_stream(self, first_missing: int) -> None:
        """Warn once when the stream ends well before the frame count its header announces (a truncated file)."""
        if self._short_stream_reported or first_missing >= self.info.num_frames - 1:
            return
        self._short_stream_reported = True
        logger.warning("%s ends after %d of the %d frames its header announces (truncated?); the missing frames "
                       "repeat the last one.", self.path, first_missing, self.info.num_frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        """All frames in order (fresh, writable arrays; the cache is neither read nor filled)."""
        self._decode_from(0)
        count = 0
        while True:
            decoded = self._next_frame()
            if decoded is None:
                break
            count += 1
            yield np.ascontiguousarray(decoded[1].to_ndarray(format="rgb24"))
        if count == 0:
            raise VideoError(f"{self.path}: no frame could be decoded.")


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size H.264 4:2:0 can store: odd dimensions grow by one pixel."""
    return width + width % 2, height + height % 2


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    if width % 2 == 0 and height % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


OUTPUT_CONTAINERS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
"""Output extension -> the container :class:`VideoWriter` writes (always H.264 video + AAC audio)."""

_BT601_MATRIX = 6  # AVCOL_SPC_SMPTE170M
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG


def _to_i420(pixels: np.ndarray) -> np.ndarray:
    """Even-sized RGB pixels as planar YUV 4:2:0 (BT.601, limited range), ``[H * 3 / 2, W]``.

    OpenCV does this conversion instead of FFmpeg's swscale: for widths that
    are not a multiple of its SIMD step, swscale reads past the end of each
    row, so its output, and with it the encoded file, depended on whatever
    bytes lay there and differed between runs.
    """
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2YUV_I420)


class _Mp4Encoder:
    """The PyAV half of :class:`VideoWriter`: H.264 (yuv420p) + AAC into one MP4 container.

    Every call for one encoder must come from the same thread (the writer's encoder thread).
    """

    def __init__(self, path: Path, container: str, size: tuple[int, int], frame_rate: Fraction,
                 audio: np.ndarray | None, audio_rate: int | None, crf: int, preset: str):
        self.frame_rate = frame_rate
        self._frames = 0
        self._container = av.open(str(path), mode="w", format=container, options={"movflags": "+faststart"})
        try:
            self._video = self._container.add_stream("libx264", rate=frame_rate)
            self._video.width, self._video.height = size
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(crf), "preset": preset}
            # The frames are converted with BT.601 limited-range coefficients (_to_i420): say so in the stream.
            self._video.codec_context.colorspace = _BT601_MATRIX
            self._video.codec_context.color_range = _LIMITED_RANGE
            self._audio_stream = None
            self._audio_samples_sent = 0
            if audio is not None:
                self._set_up_audio(audio, audio_rate)
        except BaseException:
            self._container.close()
            raise

    def _set_up_audio(self, audio: np.ndarray, audio_rate: int | None) -> None:
        if not audio_rate:
            raise ValueError("audio_rate is required with audio")
        samples = downmix_to_stereo(np.atleast_2d(np.asarray(audio, dtype=np.float32)))  # AAC: mono or stereo
        self._audio = np.ascontiguousarray(np.clip(samples, -1.0, 1.0))
        self._audio_rate = int(audio_rate)
        layout = "mono" if self._audio.shape[0] == 1 else "stereo"
        self._audio_stream = self._container.add_stream("aac", rate=self._audio_rate, layout=layout)

    def encode(self, pixels: np.ndarray) -> None:
        """Append one RGB ``uint8`` frame of the stream's (even) size, and the audio up to its end."""
        video_frame = av.VideoFrame.from_ndarray(_to_i420(pixels), format="yuv420p")
        video_frame.colorspace, video_frame.color_range = _BT601_MATRIX, _LIMITED_RANGE
        video_frame.pts = self._frames
        video_frame.time_base = 1 / self.frame_rate
        for packet in self._video.encode(video_frame):
            self._container.mux(packet)
        self._frames += 1
        if self._audio_stream is not None:
            self._send_audio(self._samples_for(self._frames))

    def _samples_for(self, num_frames: int) -> int:
        return round(num_frames / self.frame_rate * self._audio_rate)

    def _send_audio(self, until: int) -> None:
        """Encode audio up to sample ``until``, padding with silence past the end of the track."""
        while self._audio_samples_sent < until:
            start = self._audio_samples_sent
            count = min(4096, until - start)
            chunk = self._audio[:, start:start + count]
            if chunk.shape[1] < count:
                chunk = np.pad(chunk, ((0, 0), (0, count - chunk.shape[1])))
            audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                                     layout=self._audio_stream.layout.name)
            audio_frame.sample_rate = self._audio_rate
            audio_frame.pts = start
            for packet in self._audio_stream.encode(audio_frame):
                self._container.mux(packet)
            self._audio_samples_sent += count

    def finish(self) -> None:
        """Flush the encoders and close the file (complete, with the ``faststart`` index)."""
        for packet in self._video.encode(None):
            self._container.mux(packet)
        if self._audio_stream is not None:
            for packet in self._audio_stream.encode(None):
                self._container.mux(packet)
        self._container.close()

    def close(self) -> None:
        """Close the container without flushing (after an error or an abort); errors are ignored."""
        try:
            self._container.close()
        except (av.FFmpegError, OSError):
            pass


def _frame_for_encoder(frame: np.ndarray) -> np.ndarray:
    """The frame as even-sized RGB pixels that share no memory with ``frame`` (the caller may reuse it)."""
    pixels = _pad_to_even(to_rgb(frame))
    return pixels.copy() if np.may_share_memory(pixels, frame) else pixels


_END_OF_FRAMES = None  # queued after the last frame


def _partial_name(path: Path) -> str:
    """The temporary name a writer on this machine and process uses for ``path``."""
    return f".{path.stem}.{socket.gethostname()}-{os.getpid()}.partial{path.suffix}"


def remove_abandoned_partials(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> list[Path]:
    """Delete the partial files for ``path`` in ``folder`` (default: beside it) whose writer is gone.

    Only files named by a writer on this machine (or by the older
    ``.<name>.<pid>.partial.mp4`` scheme) whose process no longer exists are
    removed, e.g. after a SIGKILL; another machine's partial files on a shared
    folder are left alone. Returns the deleted paths.
    """
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.(?:(?P<host>.+)-)?(?P<pid>\d+)\.partial{re.escape(path.suffix)}")
    removed = []
    for candidate in folder.glob(f".{glob.escape(path.stem)}.*.partial{glob.escape(path.suffix)}"):
        match = pattern.fullmatch(candidate.name)
        if match is None or match["host"] not in (None, socket.gethostname()):
            continue
        if int(match["pid"]) != os.getpid() and not process_running(int(match["pid"])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


class VideoWriter:
    """Writes an H.264 + AAC MP4 atomically, encoding on a worker thread.

    Frames go to ``.<name>.<host>-<pid>.partial.<ext>`` beside the target (or in
    ``partial_dir``, e.g. an application's temp folder); :meth:`close` muxes the
    rest of the audio and moves the file to its name. Leaving the ``with`` block
    by an exception (or calling :meth:`abort`) deletes the partial file, so
    nothing half-written ever appears under the final name. Odd frame sizes are
    padded by one edge pixel (H.264 4:2:0 needs even sizes).

    :meth:`write` copies the frame into a queue of at most ``queue_frames``
    frames (blocking while it is full) and returns; an encoder thread, the
    only thread that touches the PyAV container, encodes them, so encoding
    overlaps whatever produces the next frames. An encoder error is raised as
    :class:`VideoError` by the next :meth:`write` or by :meth:`close`, which
    then deletes the partial file instead of renaming it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float | Fraction,
        audio: np.ndarray | None = None,
        audio_rate: int | None = None,
        crf: int = 18,
        preset: str = "medium",
        partial_dir: str | os.PathLike | None = None,
        queue_frames: int = 4,
    ):
        self.path = Path(path)
        self._container_format = OUTPUT_CONTAINERS.get(self.path.suffix.lower())
        if self._container_format is None:
            raise VideoError(f"Cannot write {self.path}: use one of {', '.join(OUTPUT_CONTAINERS)} as the extension.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(partial_dir) if partial_dir is not None else self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        remove_abandoned_partials(self.path, folder)
        self.partial_path = folder / _partial_name(self.path)
        self.size = (width, height)
        self.frame_rate = Fraction(fps).limit_denominator(100000)
        self.frames_written = 0
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max(1, queue_frames))
        self._error: Exception | None = None
        self._aborting = threading.Event()
        self._stopped = False
        opened: Future[None] = Future()
        self._encoder = threading.Thread(target=self._run_encoder, name="musetalk-encode", daemon=True,
                                         args=(opened, audio, audio_rate, crf, preset))
        self._encoder.start()
        opened.result()  # raises what opening the file raised

    def _run_encoder(self, opened: Future, audio: np.ndarray | None, audio_rate: int | None, crf: int,
                     preset: str) -> None:
        """Encoder thread: open the file, encode queued frames until the end marker, then flush and close.

        After an error or an abort, queued frames are still taken (and dropped) so :meth:`write` never blocks.
        """
        try:
            encoder = _Mp4Encoder(self.partial_path, self._container_format, even_size(*self.size), self.frame_rate,
                                  audio, audio_rate, crf, preset)
        except BaseException as error:
            self.partial_path.unlink(missing_ok=True)
            opened.set_exception(error)
            return
        opened.set_result(None)
        while (pixels := self._queue.get()) is not _END_OF_FRAMES:
            if self._error is None and not self._aborting.is_set():
                try:
                    encoder.encode(pixels)
                except Exception as error:
                    self._error = error
        if self._error is None and not self._aborting.is_set():
            try:
                encoder.finish()
            except Exception as error:
                self._error = error
        encoder.close()  # a no-op after finish()

    def _raise_encoder_error(self) -> None:
        if self._error is not None:
            raise VideoError(f"Encoding {self.path} failed: {self._error}") from self._error

    def write(self, frame: np.ndarray) -> None:
        """Queue one RGB ``uint8`` frame of the size given at construction (a copy; the caller may reuse ``frame``)."""
        if self._stopped:
            raise VideoError(f"{self.path}: the writer is closed.")
        if frame.shape[:2] != (self.size[1], self.size[0]):
            raise VideoError(f"Frame is {frame.shape[1]}x{frame.shape[0]}, writer expects {self.size[0]}x{self.size[1]}")
        if frame.dtype != np.uint8:
            raise VideoError(f"Frames must be uint8, got {frame.dtype}")
        self._raise_encoder_error()
        self._queue.put(_frame_for_encoder(frame))
        self.frames_written += 1

    def _stop_encoder(self) -> None:
        """Send the end marker and wait until the encoder thread has closed the container."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(_END_OF_FRAMES)
            self._encoder.join()

    def close(self) -> Path:
        """Encode the queued frames, flush, and move the finished file to its name.

        An encoder error is raised here (as :class:`VideoError`) after the
        partial file is deleted; the final name is then never created.
        """
        if self.frames_written == 0:
            self.abort()
            raise VideoError(f"No frames were written to {self.path}.")
        self._stop_encoder()
        if self._error is not None:
            self.partial_path.unlink(missing_ok=True)
            self._raise_encoder_error()
        try:
            os.replace(self.partial_path, self.path)
        except OSError:  # another file system: copy next to the target first, then rename atomically
            staged = self.path.with_name(_partial_name(self.path))
            shutil.move(self.partial_path, staged)
            os.replace(staged, self.path)
        return self.path

    def abort(self) -> None:
        """Stop writing (queued frames are dropped) and delete the partial file."""
        self._aborting.set()
        self._stop_encoder()
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
