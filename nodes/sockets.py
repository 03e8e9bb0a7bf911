"""The pack's own socket types (``io.Custom``): the values passed between MuseTalk nodes."""

from comfy_api.latest import io

UNet = io.Custom("MUSETALK_UNET")
VAE = io.Custom("MUSETALK_VAE")
Whisper = io.Custom("MUSETALK_WHISPER")
FaceParser = io.Custom("MUSETALK_FACE_PARSER")
Avatar = io.Custom("MUSETALK_AVATAR")
AudioFeatures = io.Custom("MUSETALK_AUDIO_FEATURES")
FaceLatents = io.Custom("MUSETALK_FACE_LATENTS")
PredictedLatents = io.Custom("MUSETALK_PREDICTED_LATENTS")
Frames = io.Custom("MUSETALK_FRAMES")
DubOptions = io.Custom("MUSETALK_DUB_OPTIONS")
