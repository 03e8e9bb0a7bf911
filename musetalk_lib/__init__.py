"""MuseTalk lip sync: a framework-free re-implementation with official-weight parity.

Modules, from the numbers up:

- ``checkpoint``: safe state-dict loading (safetensors, ``weights_only`` pickles).
- ``weights``: the official weight layout and the missing-weights error.
- ``audio_io``, ``audio_features``: speech to 16 kHz, Whisper features, per-frame chunks.
- ``crop``, ``face_parsing``, ``blending``: face boxes, BiSeNet masks, paste-back.
- ``vae``, ``unet``: masked-face latents and the single-step MuseTalk UNet.

Importing this package is cheap; submodules load torch and the model libraries.
"""

__version__ = "0.1.0"
