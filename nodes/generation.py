"""The composable generation blocks: audio features, face latents, UNet, and pasting the mouth back."""

from __future__ import annotations

import logging

from ..musetalk_lib.options import BLEND_VARIANTS, LENGTH_POLICIES, MASK_MODES
from .runtime import Progress, output_is_linked

CATEGORY = "MuseTalk"
BATCH_SIZE = ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Frames per model batch (more = faster, more memory)."})
LENGTH_POLICY = (list(LENGTH_POLICIES), {
    "default": "pingpong",
    "tooltip": "When the speech outlasts the video: play it back and forth (official), loop it, or stop at its end."})

logger = logging.getLogger(__name__)


class MuseTalkWhisperAudioFeatures:
    """Speech -> Whisper features, windowed per video frame."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "whisper": ("MUSETALK_WHISPER",),
                "audio": ("AUDIO",),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the video to dub (connect Load Avatar's fps)."}),
                "context_left": ("INT", {"default": 2, "min": 0, "max": 8,
                                         "tooltip": "Video frames of audio context before each frame (official: 2)."}),
                "context_right": ("INT", {"default": 2, "min": 0, "max": 8,
                                          "tooltip": "Video frames of audio context after each frame (official: 2)."}),
                "exact_fps": ("BOOLEAN", {"default": True,
                                          "tooltip": "Use the true frame rate. Off = the official int(fps) "
                                                     "truncation, which drifts on 29.97/23.976 fps."}),
            },
        }

    RETURN_TYPES = ("MUSETALK_AUDIO_FEATURES", "INT")
    RETURN_NAMES = ("audio_features", "frame_count")
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encodes speech with Whisper-tiny into per-frame audio tokens for the MuseTalk UNet."

    def encode(self, whisper, audio, fps, context_left, context_right, exact_fps):
        from ..musetalk_lib.audio_features import AudioFeatures
        from ..musetalk_lib.audio_io import to_whisper_input
        from .convert import audio_samples

        samples, sample_rate = audio_samples(audio)
        speech = to_whisper_input(samples, sample_rate)
        features = AudioFeatures.for_video(whisper.ready()(speech), speech.shape[0], fps, context_left, context_right,
                                           exact_fps)
        if features.num_frames == 0:
            raise ValueError(f"The audio ({speech.shape[0] / 16000:.3f} s) is shorter than one frame at {fps:g} fps.")
        return (features, features.num_frames)


class MuseTalkVAEEncodeMaskedFace:
    """Crops every face to 256x256 and encodes it twice: lower half masked, and whole (the reference)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"avatar": ("MUSETALK_AVATAR",), "vae": ("MUSETALK_VAE",), "batch_size": BATCH_SIZE},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("MUSETALK_FACE_LATENTS",)
    RETURN_NAMES = ("face_latents",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Masked and reference SD-VAE latents of every source frame with a face (the UNet's 8 input channels)."

    def encode(self, avatar, vae, batch_size, unique_id=None):
        from ..musetalk_lib.avatar import encode_faces
        from .convert import FaceLatentsPayload

        faces = encode_faces(avatar.source, avatar.track, vae.ready(), batch_size, Progress(unique_id))
        return (FaceLatentsPayload(avatar, faces, vae.random_weights),)


class MuseTalkUNet:
    """One UNet pass per output frame: the avatar's latents plus that frame's audio tokens."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet": ("MUSETALK_UNET",),
                "face_latents": ("MUSETALK_FACE_LATENTS",),
                "audio_features": ("MUSETALK_AUDIO_FEATURES",),
                "batch_size": BATCH_SIZE,
                "length_policy": LENGTH_POLICY,
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("MUSETALK_PREDICTED_LATENTS",)
    RETURN_NAMES = ("predicted_latents",)
    FUNCTION = "predict"
    CATEGORY = CATEGORY
    DESCRIPTION = "Predicts the mouth latents for every frame of the speech (as many frames as the audio covers)."

    def predict(self, unet, face_latents, audio_features, batch_size, length_policy, unique_id=None):
        from ..musetalk_lib.pipeline import OutputPlan, predict_all
        from .convert import PredictionPayload

        avatar = face_latents.avatar
        if abs(audio_features.fps - avatar.fps) > 1e-3:
            raise ValueError(f"The audio features were made for {audio_features.fps:g} fps but the avatar is "
                             f"{avatar.fps:g} fps: connect Load Avatar's fps output to Whisper Audio Features.")
        plan = OutputPlan.build(audio_features.num_frames, avatar.track.has_face, length_policy)
        latents = predict_all(unet.ready(), face_latents.faces, audio_features, plan, batch_size, Progress(unique_id))
        random_weights = unet.random_weights or face_latents.random_weights
        return (PredictionPayload(avatar, plan, latents, random_weights),)


class MuseTalkBlendMouth:
    """Decodes the predicted faces and pastes the mouth region back into the source frames."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "predicted_latents": ("MUSETALK_PREDICTED_LATENTS",),
                "vae": ("MUSETALK_VAE",),
                "mask_mode": (list(MASK_MODES), {
                    "default": "jaw",
                    "tooltip": "jaw (v1.5), raw (v1.0), neck: face-parsing masks; landmarks: no parser needed. "
                               "Without a face parser connected, landmarks is used."}),
                "blend": (list(BLEND_VARIANTS), {"default": "normal",
                                                 "tooltip": "Edge softness: normal (5% blur) or realtime (10%)."}),
                "cheek_width": ("INT", {"default": 90, "min": 0, "max": 256,
                                        "tooltip": "jaw mode: half-width of the cheek band kept wide (512 px space)."}),
                "batch_size": BATCH_SIZE,
                "pad_to_even": ("BOOLEAN", {"default": True,
                                            "tooltip": "Pad odd frame sizes by one pixel so video encoders accept them."}),
            },
            "optional": {"face_parser": ("MUSETALK_FACE_PARSER",)},
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    RETURN_TYPES = ("IMAGE", "MUSETALK_FRAMES", "FLOAT")
    RETURN_NAMES = ("images", "frames", "fps")
    OUTPUT_TOOLTIPS = ("The dubbed frames at source resolution (built only when this output is connected).",
                       "The same frames, streamed: connect to MuseTalk Video Combine for long videos.",
                       "Frame rate of the output.")
    FUNCTION = "blend"
    CATEGORY = CATEGORY
    DESCRIPTION = "Pastes the generated mouths into the source frames; frames without a face pass through unchanged."

    def blend(self, predicted_latents, vae, mask_mode, blend, cheek_width, batch_size, pad_to_even,
              face_parser=None, unique_id=None, prompt=None):
        from dataclasses import replace

        from ..musetalk_lib.avatar import BlendMasks
        from ..musetalk_lib.pipeline import FrameStream, decode_and_blend
        from .convert import image_and_stream

        prediction = predicted_latents
        avatar = prediction.avatar
        notes = [avatar.track.face_summary()]
        if face_parser is None and mask_mode != "landmarks":
            notes.append(f"No face parser connected: the landmark mask was used instead of '{mask_mode}'.")
            mask_mode = "landmarks"
        masks = BlendMasks(avatar.track, replace(avatar.settings, cheek_width=cheek_width), mask_mode,
                           face_parser.ready() if face_parser is not None else None)
        progress = Progress(unique_id)

        def produce():
            return decode_and_blend(avatar.source, masks, prediction.plan, prediction.latents, vae.ready(), blend,
                                    batch_size, progress)

        stream = FrameStream(prediction.plan.num_frames, avatar.source.width, avatar.source.height,
                             avatar.source.frame_rate, produce)
        images, stream = image_and_stream(stream, output_is_linked(prompt, unique_id, 0), even=pad_to_even)
        if prediction.random_weights:
            notes.append("RANDOM weights in use: the output is not lip-synced.")
        for note in notes[1:]:
            logger.warning("MuseTalk Blend Mouth: %s", note)
        return {"ui": {"text": notes}, "result": (images, stream, avatar.fps)}
