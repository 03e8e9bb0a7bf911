"""MuseTalk lip sync: a framework-free re-implementation with official-weight parity.

Modules, from the numbers up:

- ``checkpoint``, ``weights``, ``download``, ``random_weights``: safe state-dict loading, the
  official weight layout (and its missing-files error), fetching it, and random test weights.
- ``audio_io``, ``audio_features``: speech to 16 kHz mono, Whisper features, per-frame chunks.
- ``unet``, ``vae``: the single-step MuseTalk UNet and the masked/reference face latents.
- ``faces``, ``face_detection``, ``crop``, ``face_parsing``, ``blending``: landmarks and face
  choice, detection backends, crop boxes, BiSeNet masks, paste-back.
- ``video_io``, ``frame_source``: streaming PyAV input/output, video/image/in-memory frames.
- ``cache_folder``, ``avatar``, ``pipeline``: checksummed cache folders published by atomic rename,
  cached avatars, and the streaming dubbing pipeline.
- ``options``, ``devices``, ``progress``: user choices, device/dtype selection, progress reports.

The ``musetalk`` command, its benchmark and its ComfyUI client live beside this package, in
``musetalk_cli``; the ComfyUI nodes in ``nodes/``.

Importing this package is cheap; submodules load torch and the model libraries.
"""

__version__ = "0.1.0"
