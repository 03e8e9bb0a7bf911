"""MuseTalk Dub: the whole job in one node, built from the same library calls as the separate blocks."""

from __future__ import annotations

import logging

from ..musetalk_lib.options import BLEND_VARIANTS, MASK_MODES
from .avatar import avatar_settings, face_inputs, open_frames, source_inputs, track_faces
from .generation import BATCH_SIZE, LENGTH_POLICY
from .runtime import Progress, input_file_problem, output_is_linked

CATEGORY = "MuseTalk"

logger = logging.getLogger(__name__)


class MuseTalkDub:
    """Video (or image) + speech in, lip-synced frames + the matching speech out."""

    DISPLAY_NAME = "MuseTalk Dub"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet": ("MUSETALK_UNET",),
                "vae": ("MUSETALK_VAE",),
                "whisper": ("MUSETALK_WHISPER",),
                "audio": ("AUDIO",),
                **source_inputs(),
                **face_inputs(),
                "mask_mode": (list(MASK_MODES), {"default": "jaw",
                                                 "tooltip": "jaw (v1.5), raw (v1.0), neck need the face parser; "
                                                            "landmarks works without it."}),
                "blend": (list(BLEND_VARIANTS), {"default": "normal"}),
                "length_policy": LENGTH_POLICY,
                "batch_size": BATCH_SIZE,
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Frames to dub instead of the file."}),
                "face_parser": ("MUSETALK_FACE_PARSER", {"tooltip": "Needed for the jaw/raw/neck masks."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "MUSETALK_FRAMES")
    RETURN_NAMES = ("images", "audio", "fps", "frames")
    OUTPUT_TOOLTIPS = ("Dubbed frames (built only when connected; use 'frames' for long videos).",
                       "The speech, cut to the video's length.", "Frame rate.",
                       "Streamed frames for MuseTalk Video Combine.")
    FUNCTION = "dub"
    CATEGORY = CATEGORY
    DESCRIPTION = "Lip-syncs a video, image or IMAGE batch to speech in one node."

    @classmethod
    def VALIDATE_INPUTS(cls, file: str | None = None) -> bool | str:
        # Names only `file`: ComfyUI attaches a refusal to every input named here (see avatar.face_inputs).
        return input_file_problem(file, cls.DISPLAY_NAME, "file") or True

    def dub(self, unet, vae, whisper, audio, file, fps, face_backend, bbox_shift, extra_margin, face_selection,
            face_index, face_point_x, face_point_y, smoothing, landmarks_file, mask_mode, blend, length_policy,
            batch_size, images=None, face_parser=None, unique_id=None, prompt=None):
        from ..musetalk_lib.audio_features import AudioFeatures
        from ..musetalk_lib.audio_io import WHISPER_SAMPLE_RATE, to_whisper_input
        from ..musetalk_lib.avatar import BlendMasks, encode_faces
        from ..musetalk_lib.pipeline import FrameStream, OutputPlan, decode_and_blend, predict_all
        from .convert import audio_samples, audio_value, image_and_stream

        progress = Progress(unique_id)
        source = open_frames(images, file, fps, self.DISPLAY_NAME)
        settings = avatar_settings(bbox_shift, extra_margin, face_selection, face_index, face_point_x, face_point_y,
                                   smoothing)
        track = track_faces(source, face_backend, landmarks_file, settings, batch_size, progress,
                            self.DISPLAY_NAME)
        notes = [track.face_summary()]

        samples, sample_rate = audio_samples(audio)
        speech = to_whisper_input(samples, sample_rate)
        rate = float(source.frame_rate)
        features = AudioFeatures.for_video(whisper.ready()(speech), speech.shape[0], rate, exact_fps=True)
        if features.num_frames == 0:
            raise ValueError(f"The audio ({speech.shape[0] / WHISPER_SAMPLE_RATE:.3f} s) is shorter than one frame.")

        faces = encode_faces(source, track, vae.ready(), batch_size, progress)
        plan = OutputPlan.build(features.num_frames, track.has_face, length_policy)
        predicted = predict_all(unet.ready(), faces, features, plan, batch_size, progress)
        if face_parser is None and mask_mode != "landmarks":
            notes.append(f"No face parser connected: the landmark mask was used instead of '{mask_mode}'.")
            mask_mode = "landmarks"
        masks = BlendMasks(track, settings, mask_mode, face_parser.ready() if face_parser is not None else None)
        stream = FrameStream(plan.num_frames, source.width, source.height, source.frame_rate,
                             lambda: decode_and_blend(source, masks, plan, predicted, vae.ready(), blend, batch_size,
                                                      progress))
        images_out, stream = image_and_stream(stream, output_is_linked(prompt, unique_id, 0), even=True)
        duration = plan.num_frames / rate
        speech_out = samples[:, :round(duration * sample_rate)]
        if unet.random_weights or vae.random_weights or whisper.random_weights:
            notes.append("RANDOM weights in use: the output is not lip-synced.")
        for note in notes[1:]:
            logger.warning("%s: %s", self.DISPLAY_NAME, note)
        return {"ui": {"text": notes}, "result": (images_out, audio_value(speech_out, sample_rate), rate, stream)}
