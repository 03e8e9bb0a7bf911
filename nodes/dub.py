"""MuseTalk Dub: the whole job in one node, through the same library stages as the separate blocks."""

from __future__ import annotations

from comfy_api.latest import io

from ..musetalk_lib.options import SILENCE_MODES
from . import sockets
from .avatar import avatar_settings, dub_options_input, face_inputs, open_frames, source_inputs, tracked_faces
from .generation import (CATEGORY, batch_size_input, blend_input, face_parser_input, length_policy_input,
                         mask_mode_input)
from .runtime import NodeProgress, hidden_value, input_file_problem, output_is_linked, reported_as

DUB_OPTION_DEFAULTS = {"preview_seconds": 0.0, "silence": "model", "max_yaw": 0.0, "align_roll": 0.0,
                       "mask_smoothing": 0}


def library_options(inputs: dict):
    """The library's avatar settings and dub options from the Dub node's widgets and its optional ``options``
    (MuseTalk Dub Options): the one place they are built."""
    from dataclasses import replace

    from ..musetalk_lib.pipeline import DubOptions

    extra = {**DUB_OPTION_DEFAULTS, **(inputs.get("options") or {})}
    settings = avatar_settings(inputs["bbox_shift"], inputs["extra_margin"], inputs["face_selection"],
                               inputs["face_index"], inputs["face_point_x"], inputs["face_point_y"],
                               inputs["smoothing"], align_roll=extra["align_roll"],
                               mask_smoothing=extra["mask_smoothing"])
    settings = replace(settings, mask_mode=inputs["mask_mode"])
    options = DubOptions(batch_size=inputs["batch_size"], length_policy=inputs["length_policy"],
                         blend_variant=inputs["blend"], preview_seconds=extra["preview_seconds"] or None,
                         silence=extra["silence"], max_yaw=extra["max_yaw"] or None)
    return settings, options


class MuseTalkDubOptions(io.ComfyNode):
    """Optional settings for MuseTalk Dub (and Load Avatar): quick preview and the failure-case options."""

    DISPLAY_NAME = "MuseTalk Dub Options"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkDubOptions", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Settings beyond the official ones, for MuseTalk Dub's (or Load Avatar's) 'options' input. "
                        "Every default is the official behaviour.",
            inputs=[
                io.Float.Input("preview_seconds", default=0.0, min=0.0, max=3600.0, step=0.5,
                               tooltip="Dub only the first seconds of the speech, to tune face and blend settings "
                                       "quickly. 0 = the whole speech."),
                io.Combo.Input("silence", options=list(SILENCE_MODES), default="model",
                               tooltip="Silent stretches (pauses, breaths, room noise): model = the model decides "
                                       "(official); gate = silence reaches Whisper as digital zeros so noise stops "
                                       "moving the mouth; source = the source frames show there, crossfaded (idle "
                                       "loops with a closed mouth)."),
                io.Float.Input("max_yaw", default=0.0, min=0.0, max=89.0, step=1.0,
                               tooltip="Face quality gate: frames whose head is turned further than this many degrees "
                                       "from frontal keep the source face, crossfaded. 0 = off (official); 25-35 "
                                       "suits detected landmarks."),
                io.Float.Input("align_roll", default=0.0, min=0.0, max=89.0, step=1.0,
                               tooltip="Upright crops for tilted heads: when the eye line is tilted more than this "
                                       "many degrees, the face is turned level before generating and turned back "
                                       "when pasted. 0 = off (official)."),
                io.Int.Input("mask_smoothing", default=0, min=0, max=6,
                             tooltip="Stable mask edges: each frame's blend mask is a majority vote of the masks "
                                     "this many frames on each side (aligned through the face boxes), so the edge "
                                     "stops flickering. 0 = off (official); 2 is a good start."),
            ],
            outputs=[sockets.DubOptions.Output(display_name="options")],
        )

    @classmethod
    def execute(cls, preview_seconds: float, silence: str, max_yaw: float, align_roll: float,
                mask_smoothing: int) -> io.NodeOutput:
        from ..musetalk_lib.avatar import AvatarSettings
        from ..musetalk_lib.pipeline import DubOptions

        with reported_as(cls.DISPLAY_NAME):  # refuse bad values here, on this node
            DubOptions(preview_seconds=preview_seconds or None, silence=silence, max_yaw=max_yaw or None)
            AvatarSettings(align_roll=align_roll or None, mask_smoothing=mask_smoothing)
        return io.NodeOutput({"preview_seconds": preview_seconds, "silence": silence, "max_yaw": max_yaw,
                              "align_roll": align_roll, "mask_smoothing": mask_smoothing})


class MuseTalkDub(io.ComfyNode):
    """Video (or image) + speech in, lip-synced frames + the matching speech out."""

    DISPLAY_NAME = "MuseTalk Dub"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkDub", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Lip-syncs a video, image or IMAGE batch to speech in one node.",
            inputs=[
                sockets.UNet.Input("unet"),
                sockets.VAE.Input("vae"),
                sockets.Whisper.Input("whisper"),
                io.Audio.Input("audio"),
                *source_inputs(),
                *face_inputs(),
                mask_mode_input(),
                blend_input(),
                length_policy_input(),
                batch_size_input(),
                io.Image.Input("images", optional=True, tooltip="Frames to dub instead of the file."),
                face_parser_input(),
                dub_options_input(),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Dubbed frames (built only when connected; use "
                                                               "'frames' for long videos)."),
                io.Audio.Output(display_name="audio", tooltip="The speech, cut to the video's length."),
                io.Float.Output(display_name="fps", tooltip="Frame rate."),
                sockets.Frames.Output(display_name="frames", tooltip="Streamed frames for MuseTalk Video Combine."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def fingerprint_inputs(cls, file="", landmarks_file="", **_):
        from .avatar import files_identity

        return files_identity(cls.DISPLAY_NAME, file=file, landmarks_file=landmarks_file)

    @classmethod
    def validate_inputs(cls, file: str | None = None) -> bool | str:
        # Names only `file`: ComfyUI attaches a refusal to every input named here (see avatar.face_inputs).
        return input_file_problem(file, cls.DISPLAY_NAME, "file") or True

    @classmethod
    def execute(cls, unet, vae, whisper, audio, file, fps, face_backend, landmarks_file, images=None,
                face_parser=None, **inputs) -> io.NodeOutput:
        from ..musetalk_lib.avatar import prepare_avatar_in_memory
        from ..musetalk_lib.pipeline import lip_sync, mask_notes, pass_through_notes, speech_features
        from .convert import audio_samples, audio_value, image_and_stream

        unique_id = hidden_value(cls, "unique_id")
        progress = NodeProgress()
        with reported_as(cls.DISPLAY_NAME):
            settings, options = library_options(inputs)
            source = open_frames(images, file, fps, cls.DISPLAY_NAME)
            samples, sample_rate = audio_samples(audio)
            features = speech_features(whisper.ready(), samples, sample_rate, float(source.frame_rate), options,
                                       progress)
            track, notes = tracked_faces(source, face_backend, landmarks_file, settings, options.batch_size, progress,
                                         cls.DISPLAY_NAME, options.allow_no_face)
            parser = face_parser.ready() if face_parser is not None else None
            avatar = prepare_avatar_in_memory(source, track, vae.ready(), settings, parser, options.batch_size,
                                              progress)
            result = lip_sync(source, avatar, features, unet.ready(), vae.ready(), options, progress)
            images_out, stream = image_and_stream(result.frames,
                                                  output_is_linked(hidden_value(cls, "prompt"), unique_id, 0),
                                                  even=True)
        notes += mask_notes(settings, avatar.mask_mode) + pass_through_notes(features, track, options)
        if options.preview_seconds:
            notes.append(f"Preview: only the first {options.preview_seconds:g} s of the speech were dubbed.")
        if unet.random_weights or vae.random_weights or whisper.random_weights:
            notes.append("RANDOM weights in use: the output is not lip-synced.")
        speech_out = samples[:, :round(result.plan.num_frames / float(source.frame_rate) * sample_rate)]
        return io.NodeOutput(images_out, audio_value(speech_out, sample_rate), float(source.frame_rate), stream,
                             ui={"text": notes})
