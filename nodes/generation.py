"""The composable generation blocks: audio features, face latents, UNet, and pasting the mouth back."""

from __future__ import annotations

from comfy_api.latest import io

from ..musetalk_lib.options import BLEND_VARIANTS, LENGTH_POLICIES, MASK_MODES
from . import sockets
from .runtime import NodeProgress, hidden_value, output_is_linked, reported_as

CATEGORY = "MuseTalk"


def batch_size_input() -> io.Int.Input:
    return io.Int.Input("batch_size", default=8, min=1, max=256,
                        tooltip="Frames per model batch (more = faster, more memory).")


def length_policy_input() -> io.Combo.Input:
    return io.Combo.Input("length_policy", options=list(LENGTH_POLICIES), default="pingpong",
                          tooltip="When the speech outlasts the video: play it back and forth (official), loop it, "
                                  "or stop at its end.")


def mask_mode_input() -> io.Combo.Input:
    return io.Combo.Input("mask_mode", options=list(MASK_MODES), default="jaw",
                          tooltip="jaw (v1.5), raw (v1.0), neck: face-parsing masks; landmarks: no parser needed. "
                                  "Without a face parser, landmarks is used (and the node says so).")


def blend_input() -> io.Combo.Input:
    return io.Combo.Input("blend", options=list(BLEND_VARIANTS), default="normal",
                          tooltip="Edge softness: normal (5% blur) or realtime (10%).")


def face_parser_input() -> io.Input:
    return sockets.FaceParser.Input("face_parser", optional=True,
                                    tooltip="Needed for the jaw/raw/neck masks; without it the landmark mask is used.")


class MuseTalkWhisperAudioFeatures(io.ComfyNode):
    """Speech -> Whisper features, windowed per video frame."""

    DISPLAY_NAME = "MuseTalk Whisper Audio Features"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkWhisperAudioFeatures", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Encodes speech with Whisper-tiny into per-frame audio tokens for the MuseTalk UNet.",
            inputs=[
                sockets.Whisper.Input("whisper"),
                io.Audio.Input("audio"),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.001,
                               tooltip="Frame rate of the video to dub (connect Load Avatar's fps)."),
                io.Int.Input("context_left", default=2, min=0, max=8,
                             tooltip="Video frames of audio context before each frame (official: 2)."),
                io.Int.Input("context_right", default=2, min=0, max=8,
                             tooltip="Video frames of audio context after each frame (official: 2)."),
                io.Boolean.Input("exact_fps", default=True,
                                 tooltip="Use the true frame rate. Off = the official int(fps) truncation, which "
                                         "drifts on 29.97/23.976 fps."),
            ],
            outputs=[sockets.AudioFeatures.Output(display_name="audio_features"),
                     io.Int.Output(display_name="frame_count")],
        )

    @classmethod
    def execute(cls, whisper, audio, fps, context_left, context_right, exact_fps) -> io.NodeOutput:
        from ..musetalk_lib.pipeline import DubOptions, speech_features
        from .convert import audio_samples

        with reported_as(cls.DISPLAY_NAME):
            samples, sample_rate = audio_samples(audio)
            options = DubOptions(context_left=context_left, context_right=context_right, exact_fps=exact_fps)
            features = speech_features(whisper.ready(), samples, sample_rate, fps, options, NodeProgress())
        return io.NodeOutput(features, features.num_frames)


class MuseTalkVAEEncodeMaskedFace(io.ComfyNode):
    """Crops every face to 256x256 and encodes it twice: lower half masked, and whole (the reference)."""

    DISPLAY_NAME = "MuseTalk VAE Encode Masked Face"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkVAEEncodeMaskedFace", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Masked and reference SD-VAE latents of every source frame with a face (the UNet's 8 input "
                        "channels).",
            inputs=[sockets.Avatar.Input("avatar"), sockets.VAE.Input("vae"), batch_size_input()],
            outputs=[sockets.FaceLatents.Output(display_name="face_latents")],
        )

    @classmethod
    def execute(cls, avatar, vae, batch_size) -> io.NodeOutput:
        from ..musetalk_lib.avatar import encode_faces
        from .convert import FaceLatentsPayload

        with reported_as(cls.DISPLAY_NAME):
            faces = encode_faces(avatar.source, avatar.track, vae.ready(), batch_size, NodeProgress())
        return io.NodeOutput(FaceLatentsPayload(avatar, faces, vae.random_weights))


class MuseTalkUNet(io.ComfyNode):
    """One UNet pass per output frame: the avatar's latents plus that frame's audio tokens."""

    DISPLAY_NAME = "MuseTalk UNet"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkUNet", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Predicts the mouth latents for every frame of the speech (as many frames as the audio "
                        "covers).",
            inputs=[sockets.UNet.Input("unet"), sockets.FaceLatents.Input("face_latents"),
                    sockets.AudioFeatures.Input("audio_features"), batch_size_input(), length_policy_input()],
            outputs=[sockets.PredictedLatents.Output(display_name="predicted_latents")],
        )

    @classmethod
    def execute(cls, unet, face_latents, audio_features, batch_size, length_policy) -> io.NodeOutput:
        from ..musetalk_lib.pipeline import DubOptions, output_plan, predict_all
        from .convert import PredictionPayload

        avatar = face_latents.avatar
        if abs(audio_features.fps - avatar.fps) > 1e-3:
            raise ValueError(f"{cls.DISPLAY_NAME}: the audio features were made for {audio_features.fps:g} fps but "
                             f"the avatar is {avatar.fps:g} fps; connect Load Avatar's fps output to Whisper Audio "
                             "Features.")
        with reported_as(cls.DISPLAY_NAME):
            plan = output_plan(audio_features, avatar.track, DubOptions(length_policy=length_policy))
            latents = predict_all(unet.ready(), face_latents.faces, audio_features, plan, batch_size,
                                  NodeProgress())
        random_weights = unet.random_weights or face_latents.random_weights
        return io.NodeOutput(PredictionPayload(avatar, plan, latents, random_weights))


class MuseTalkBlendMouth(io.ComfyNode):
    """Decodes the predicted faces and pastes the mouth region back into the source frames."""

    DISPLAY_NAME = "MuseTalk Blend Mouth"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkBlendMouth", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Pastes the generated mouths into the source frames; frames without a face pass through "
                        "unchanged.",
            inputs=[
                sockets.PredictedLatents.Input("predicted_latents"),
                sockets.VAE.Input("vae"),
                mask_mode_input(),
                blend_input(),
                io.Int.Input("cheek_width", default=90, min=0, max=256,
                             tooltip="jaw mode: half-width of the cheek band kept wide (512 px space)."),
                batch_size_input(),
                io.Boolean.Input("pad_to_even", default=True,
                                 tooltip="Pad odd frame sizes by one pixel so video encoders accept them."),
                face_parser_input(),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The dubbed frames at source resolution (built "
                                                                    "only when this output is connected)."),
                     sockets.Frames.Output(display_name="frames", tooltip="The same frames, streamed: connect to "
                                                                          "MuseTalk Video Combine for long videos."),
                     io.Float.Output(display_name="fps", tooltip="Frame rate of the output.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, predicted_latents, vae, mask_mode, blend, cheek_width, batch_size, pad_to_even,
                face_parser=None) -> io.NodeOutput:
        from dataclasses import replace

        from ..musetalk_lib.pipeline import DubOptions, blended_frames
        from .convert import image_and_stream

        prediction = predicted_latents
        avatar = prediction.avatar
        unique_id = hidden_value(cls, "unique_id")
        with reported_as(cls.DISPLAY_NAME):
            # The library's options, built from the inputs in this one place.
            settings = replace(avatar.settings, mask_mode=mask_mode, cheek_width=cheek_width)
            options = DubOptions(blend_variant=blend, batch_size=batch_size)
            stream, notes = blended_frames(avatar.source, avatar.track, settings, prediction.plan, prediction.latents,
                                           vae.ready(), face_parser.ready() if face_parser is not None else None,
                                           options, NodeProgress())
            images, stream = image_and_stream(stream, output_is_linked(hidden_value(cls, "prompt"), unique_id, 0),
                                              even=pad_to_even)
        notes = [avatar.track.face_summary(), *notes]
        if prediction.random_weights:
            notes.append("RANDOM weights in use: the output is not lip-synced.")
        return io.NodeOutput(images, stream, avatar.fps, ui={"text": notes})
