"""MuseTalk Video Combine: frames + speech -> an H.264/AAC MP4 in ComfyUI's output folder, with a preview."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from . import sockets
from .runtime import (NodeProgress, in_comfyui, output_directory, output_prefix_problem, reported_as,
                      temp_directory)

CATEGORY = "MuseTalk"

logger = logging.getLogger(__name__)


def next_output_path(prefix: str, width: int, height: int):
    """``(path, subfolder)`` of the next ``<prefix>_NNNNN_.mp4``, following ComfyUI's filename_prefix rules."""
    from pathlib import Path

    if in_comfyui():
        import folder_paths

        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(output_directory()),
                                                                               width, height)
        return Path(folder) / f"{name}_{counter:05}_.mp4", subfolder
    subfolder = Path(prefix).parent.as_posix().strip(".")
    folder = output_directory() / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    counter = len(list(folder.glob(f"{Path(prefix).name}_*_.mp4"))) + 1
    return folder / f"{Path(prefix).name}_{counter:05}_.mp4", subfolder


class MuseTalkVideoCombine(io.ComfyNode):
    """Writes the frames and the speech to an MP4 (streaming when given MuseTalk frames) and previews it."""

    DISPLAY_NAME = "MuseTalk Video Combine"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkVideoCombine", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Saves an H.264 + AAC MP4 (no ffmpeg binary needed) and shows it in the node.",
            inputs=[
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.001),
                io.String.Input("filename_prefix", default="MuseTalk/dub",
                                tooltip="Output name; may contain subfolders and %date:...%."),
                io.Int.Input("crf", default=18, min=0, max=51, tooltip="H.264 quality: lower is better."),
                io.Image.Input("images", optional=True, tooltip="Frames from any node."),
                sockets.Frames.Input("frames", optional=True,
                                     tooltip="Streamed frames from Blend Mouth or Dub (long videos)."),
                io.Audio.Input("audio", optional=True, tooltip="Speech; cut or padded with silence to the video's "
                                                               "length."),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix: str | None = None) -> bool | str:
        return output_prefix_problem(filename_prefix, cls.DISPLAY_NAME) or True

    @classmethod
    def execute(cls, fps, filename_prefix, crf, images=None, frames=None, audio=None) -> io.NodeOutput:
        from ..musetalk_lib.video_io import VideoWriter
        from .convert import audio_samples

        if problem := output_prefix_problem(filename_prefix, cls.DISPLAY_NAME):
            raise PermissionError(problem)
        if (images is None) == (frames is None):
            raise ValueError(f"{cls.DISPLAY_NAME}: connect exactly one of images (IMAGE) or frames (MUSETALK_FRAMES).")
        with reported_as(cls.DISPLAY_NAME):
            if frames is not None:
                count, width, height = frames.num_frames, frames.width, frames.height
                source = iter(frames)
            else:
                count, height, width = images.shape[0], images.shape[1], images.shape[2]
                source = ((image[..., :3].clamp(0, 1) * 255).round().byte().numpy() for image in images)
            samples, sample_rate = audio_samples(audio) if audio is not None else (None, None)
            path, subfolder = next_output_path(filename_prefix, width, height)
            progress = NodeProgress()
            with VideoWriter(path, width, height, fps, samples, sample_rate, crf=crf,
                             partial_dir=temp_directory()) as writer:
                for index, frame in enumerate(source, start=1):
                    writer.write(frame)
                    progress("video encode", index, count)
        logger.info("%s: wrote %s (%d frames)", cls.DISPLAY_NAME, path, writer.frames_written)
        preview = {"filename": path.name, "subfolder": subfolder, "type": "output"}
        return io.NodeOutput(str(path), ui={"images": [preview], "animated": (True,)})
