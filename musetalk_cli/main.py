"""The ``musetalk`` command: dub videos, manage avatar caches and weights, benchmark.

Run ``musetalk --help`` or ``musetalk <command> --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from musetalk_lib import __version__
from musetalk_lib.options import (BLEND_VARIANTS, DECODE_MODES, DTYPE_CHOICES, FACE_BACKENDS, FACE_SELECTIONS,
                                  LENGTH_POLICIES, MASK_MODES, SILENCE_MODES, VERSIONS)
from musetalk_lib.progress import TerminalProgress

DEFAULT_MODELS_DIR = os.environ.get("MUSETALK_MODELS_DIR", "models")
DEFAULT_CACHE_DIR = os.environ.get("MUSETALK_CACHE_DIR", str(Path.home() / ".cache" / "musetalk" / "avatars"))

EXIT_OK = 0
EXIT_ERROR = 1  # bad input, missing weights, a failed run: the message says what to do
EXIT_USAGE = 2  # a wrong command line (argparse)
EXIT_NOTHING_DUBBED = 3  # the face to dub is in no frame (see --allow-no-face)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl+C)
EXIT_TERMINATED = 143  # SIGTERM

EPILOG = """\
Weights: the official files go under --models-dir in the official layout
(musetalkV15/, musetalk/, sd-vae/, whisper/, face-parse-bisent/, face_alignment/).
`musetalk weights check` lists what is there, `musetalk weights download` fetches
them (needs internet), `musetalk weights random DIR` writes RANDOM ones for tests.

Exit status: 0 done, 1 error (the message says what to do), 2 wrong command line,
3 nothing dubbed (no face in any frame), 130 interrupted, 143 terminated.
Output files appear only when complete: an error or a signal leaves nothing.
"""


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (pixels), got {text!r}") from None
    return (x, y)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models and hardware")
    group.add_argument("--models-dir", default=DEFAULT_MODELS_DIR,
                       help="folder with the official weights layout (default: %(default)s; env MUSETALK_MODELS_DIR)")
    group.add_argument("--version", choices=VERSIONS, default="v15", help="MuseTalk version (default: %(default)s)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: %(default)s)")
    group.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                       help="model precision; auto = fp16 on CUDA (fp32 fallback where fp16 overflows), "
                            "bf16 on CPUs with AMX, fp32 elsewhere")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet and the VAE decoder (slow first batch; falls back with a "
                            "warning where compiling is not possible)")
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic GPU kernels (cuDNN/cuBLAS), a little slower; CPU runs are "
                            "reproducible without it")
    group.add_argument("--batch-size", type=int, default=8, help="frames per model batch (default: %(default)s)")


def _add_face_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("faces and avatar")
    group.add_argument("--landmarks", type=Path, help="precomputed 68-point landmarks JSON (skips detection)")
    group.add_argument("--face-backend", choices=FACE_BACKENDS, default="auto",
                       help="face detector when no --landmarks; auto: face-alignment if its weights are in the models folder, else dlib (default: %(default)s)")
    group.add_argument("--face", choices=FACE_SELECTIONS, default="largest",
                       help="which face to dub when there are several (default: %(default)s)")
    group.add_argument("--face-index", type=int, default=0, help="with --face index: 0 = leftmost face")
    group.add_argument("--face-point", type=_point, help="with --face point: X,Y inside the face to dub")
    group.add_argument("--bbox-shift", type=int, default=0,
                       help="move the mask's upper edge down (+) or up (-) in pixels: more or less mouth opening")
    group.add_argument("--extra-margin", type=int, help="pixels added below the chin (default: 10 for v15, 0 for v1)")
    group.add_argument("--smoothing", type=int, default=2,
                       help="temporal smoothing radius for face boxes in frames, 0 = off (default: %(default)s)")
    group.add_argument("--mask", choices=MASK_MODES,
                       help="blend mask: face parsing modes, or landmarks (no parsing weights); "
                            "default jaw for v15, raw for v1")
    group.add_argument("--align-roll", type=float, metavar="DEGREES",
                       help="upright crops for tilted heads: when the eye line is tilted more than this (e.g. 10), "
                            "turn the face upright before cropping and turn the generated face back when pasting "
                            "(default: off, the official crop)")
    group.add_argument("--mask-smoothing", type=int, default=0, metavar="FRAMES",
                       help="steady mask edges: vote each frame's blend mask with the masks of this many frames on "
                            "each side, aligned through the crop boxes (e.g. 2; default: %(default)s = off)")
    group.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                       help="avatar cache folder (default: %(default)s; env MUSETALK_CACHE_DIR)")
    group.add_argument("--fps", type=float, default=25.0, help="frame rate for a still-image source (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musetalk",
        description="MuseTalk lip sync: make a talking-face video say new speech.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version-info", action="version", version=f"musetalk {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dub = commands.add_parser(
        "dub", help="lip-sync a video or image to speech",
        description="Lip-sync VIDEO_OR_IMAGE to AUDIO and write an MP4 (H.264 + AAC) with that speech.\n"
                    "Example: musetalk dub talk.mp4 speech.wav -o dubbed.mp4 --models-dir models",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    dub.add_argument("source", type=Path, metavar="VIDEO_OR_IMAGE")
    dub.add_argument("audio", type=Path, metavar="AUDIO", help="speech: wav, flac, mp3, m4a, or a video's audio track")
    dub.add_argument("-o", "--output", type=Path, required=True, help="output .mp4 (written atomically)")
    _add_model_arguments(dub)
    _add_face_arguments(dub)
    generation = dub.add_argument_group("generation")
    generation.add_argument("--length", choices=LENGTH_POLICIES, default="pingpong",
                            help="when the speech outlasts the video: play it back and forth (official), "
                                 "loop it, or stop at its end (default: %(default)s)")
    generation.add_argument("--blend", choices=BLEND_VARIANTS, default="normal",
                            help="blend edge softness: normal (5%% blur) or realtime (10%%)")
    generation.add_argument("--decode", choices=DECODE_MODES, default="partial",
                            help="partial (default): decode exactly only the face rows the blend shows, 1.33x "
                                 "faster, pixels differ less than bf16 does (see README); full: the whole face, "
                                 "as the official code")
    generation.add_argument("--official-fps", action="store_true",
                            help="truncate fractional frame rates like the official code (29.97 -> 29); "
                                 "drifts out of sync, only for parity checks")
    generation.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default: %(default)s)")
    generation.add_argument("--preview-seconds", type=float, metavar="SECONDS",
                            help="dub only the first SECONDS of the speech, to tune face and blend settings quickly")
    generation.add_argument("--silence", choices=SILENCE_MODES, default="model",
                            help="what silent stretches of the speech (pauses, breaths, room noise) do: model = "
                                 "the model decides (official, default); gate = silence becomes digital zeros "
                                 "before Whisper so noise stops moving the mouth; source = the source frames show "
                                 "there, crossfaded (for idle loops with a closed mouth). The spans are reported")
    generation.add_argument("--max-yaw", type=float, metavar="DEGREES",
                            help="face quality gate: frames whose head is turned further than this from frontal "
                                 "(estimated from the landmarks; e.g. 45) keep the source face, crossfaded, instead "
                                 "of a broken generated mouth (default: off)")
    generation.add_argument("--allow-no-face", action="store_true",
                            help="when no frame has the face, write the video unchanged (exit 0) instead of "
                                 "failing with exit status 3")
    generation.add_argument("--lora", type=Path, metavar="FILE",
                            help="identity LoRA from `musetalk finetune` (.safetensors), merged into the UNet")
    generation.add_argument("--lora-strength", type=float, default=1.0,
                            help="scale of the LoRA's change: 0 = base model, 1 = as trained (default: %(default)s)")

    avatar = commands.add_parser("avatar", help="prepare or inspect a cached avatar")
    avatar_commands = avatar.add_subparsers(dest="avatar_command", required=True, metavar="ACTION")
    prepare = avatar_commands.add_parser("prepare", help="track faces and encode latents once, for reuse with any speech")
    prepare.add_argument("source", type=Path, metavar="VIDEO_OR_IMAGE")
    _add_model_arguments(prepare)
    _add_face_arguments(prepare)
    info = avatar_commands.add_parser("info", help="check and describe a prepared avatar folder")
    info.add_argument("folder", type=Path)

    weights = commands.add_parser("weights", help="check, download or fake the model weights", epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    weights_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    check = weights_commands.add_parser("check", help="list every expected file: present or missing, size, hash")
    check.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    check.add_argument("--no-hash", action="store_true", help="skip SHA-256 (faster on large files)")
    download = weights_commands.add_parser("download", help="download the official weights (needs internet)")
    download.add_argument("--models-dir", default=DEFAULT_MODELS_DIR)
    download.add_argument("--only", nargs="+", metavar="COMPONENT",
                          help="components to fetch (default: all): unet-v15 unet-v1 vae whisper face-parsing face-alignment")
    download.add_argument("--dry-run", action="store_true", help="only print what would be downloaded")
    random_weights = weights_commands.add_parser(
        "random", help="write RANDOM weights in the official layout (tests and smoke runs only: no lip sync)")
    random_weights.add_argument("directory", type=Path)
    random_weights.add_argument("--size", choices=["tiny", "full"], default="tiny",
                                help="tiny: a few MB, fast on CPU; full: official sizes (about 3.7 GB)")
    random_weights.add_argument("--seed", type=int, default=0)

    lora = commands.add_parser("lora", help="merge an identity LoRA into a full UNet file")
    lora_commands = lora.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    merge = lora_commands.add_parser(
        "merge", help="write the base UNet with a LoRA merged in: a full UNet file in the official format",
        description="Write --models-dir's UNet with LORA merged in. A .pth output is a plain state dict like "
                    "the official unet.pth (use it as musetalkV15/unet.pth); .safetensors is the same tensors.")
    merge.add_argument("lora", type=Path, metavar="LORA", help="a .safetensors file from `musetalk finetune`")
    merge.add_argument("-o", "--output", type=Path, required=True, help="output .pth or .safetensors (atomic)")
    merge.add_argument("--strength", type=float, default=1.0, help="scale of the LoRA's change (default: %(default)s)")
    merge.add_argument("--models-dir", default=DEFAULT_MODELS_DIR, help="folder with the base UNet (default: %(default)s)")
    merge.add_argument("--version", choices=VERSIONS, default="v15", help="MuseTalk version (default: %(default)s)")

    commands.add_parser("finetune", add_help=False,  # its arguments are training.finetune's (see _split_finetune)
                        help="train an identity LoRA on one person's talking videos "
                             "(`musetalk finetune --help`; needs the checkout's training/)")

    from . import bench, queue_client

    bench.add_arguments(commands.add_parser("bench", help="measure frames per second per stage and peak memory"))
    queue_client.add_arguments(commands.add_parser(
        "queue", help="run an API-format workflow on a ComfyUI server and download its outputs"))
    return parser


def _avatar_settings(args):
    from musetalk_lib.avatar import AvatarSettings

    return AvatarSettings(version=args.version, bbox_shift=args.bbox_shift, extra_margin=args.extra_margin,
                          face_selection=args.face, face_index=args.face_index, face_point=args.face_point,
                          smoothing=args.smoothing, mask_mode=args.mask, align_roll=args.align_roll,
                          mask_smoothing=args.mask_smoothing)


def _load_models(args):
    from musetalk_lib.devices import use_deterministic_algorithms
    from musetalk_lib.pipeline import MuseTalkModels

    if args.deterministic:
        use_deterministic_algorithms()

    models = MuseTalkModels.load(args.models_dir, args.version, args.device, args.dtype,
                                 face_parsing=args.mask != "landmarks", lora=getattr(args, "lora", None),
                                 lora_strength=getattr(args, "lora_strength", 1.0))
    return models.compile() if args.compile else models


def _run_dub(args, progress: TerminalProgress) -> None:
    from musetalk_lib.pipeline import DubOptions, check_dub_files, dub

    check_dub_files(args.source, args.audio, args.output, args.landmarks, args.cache_dir)  # before loading the models
    if args.lora is not None and not args.lora.is_file():
        raise FileNotFoundError(f"LoRA file not found: {args.lora}")
    options = DubOptions(batch_size=args.batch_size, length_policy=args.length, blend_variant=args.blend,
                         exact_fps=not args.official_fps, decode=args.decode, allow_no_face=args.allow_no_face,
                         preview_seconds=args.preview_seconds, silence=args.silence, max_yaw=args.max_yaw)
    report = dub(args.source, args.audio, args.output, _load_models(args), settings=_avatar_settings(args),
                 options=options, cache_root=args.cache_dir, landmarks_path=args.landmarks,
                 face_backend=args.face_backend, face_models_dir=args.models_dir, still_fps=args.fps,
                 crf=args.crf, progress=progress)
    progress.close()
    print(f"Wrote {report.output}: {report.frames} frames at {float(report.frame_rate):g} fps "
          f"({report.duration:.2f} s){' [RANDOM WEIGHTS]' if report.random_weights else ''}")
    if report.frames_without_face:
        print(f"No face found in source frames {report.frames_without_face}; they were left unchanged.")
    if report.frames_beyond_yaw:
        print(f"Head turned past --max-yaw in source frames {report.frames_beyond_yaw}; they keep the source face.")
    if args.silence != "model":
        print(f"Silent output frames ({args.silence}): {report.silent_spans or 'none'}")
    print("Time: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report.seconds.items()))


def _run_lora(args) -> None:
    from musetalk_lib.checkpoint import save_state_dict, save_torch_state_dict
    from musetalk_lib.lora import merged_unet_state_dict
    from musetalk_lib.weights import find_model_files

    if not args.lora.is_file():
        raise FileNotFoundError(f"LoRA file not found: {args.lora}")
    if args.output.suffix.lower() not in (".pth", ".safetensors"):
        raise ValueError(f"{args.output}: the merged UNet is written as .pth (official format) or .safetensors")
    files = find_model_files(args.models_dir, args.version)
    state_dict = merged_unet_state_dict(files.unet_config, files.unet_weights, args.lora, args.strength)
    save = save_state_dict if args.output.suffix.lower() == ".safetensors" else save_torch_state_dict
    save(state_dict, args.output)
    print(f"Wrote {args.output}: {files.unet_weights} with {args.lora} merged at strength {args.strength:g}")


def _run_finetune(arguments: list[str]) -> None:
    """``training/`` sits beside ``musetalk_lib/`` in a checkout; it is not part of the installed package."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "training" / "__init__.py").is_file():
        raise ImportError(f"`musetalk finetune` needs the training/ folder of a repository checkout beside {root}")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    from training.finetune import main as finetune

    finetune(arguments, prog="musetalk finetune")


def _run_avatar(args, progress: TerminalProgress) -> None:
    from musetalk_lib.avatar import Avatar, prepare_avatar
    from musetalk_lib.face_detection import create_detector
    from musetalk_lib.faces import load_landmarks_json
    from musetalk_lib.frame_source import open_source

    if args.avatar_command == "info":
        avatar = Avatar(args.folder)
        print(json.dumps({**avatar.manifest, "frames_without_face": avatar.track.missing_ranges()}, indent=2))
        return
    models = _load_models(args)
    source = open_source(args.source, args.fps)
    if args.landmarks:
        faces, detector = load_landmarks_json(args.landmarks), None
    else:
        faces, detector = None, create_detector(args.face_backend, args.models_dir, models.vae.device)
    avatar = prepare_avatar(source, models.vae, args.cache_dir, _avatar_settings(args), detector=detector,
                            faces=faces, parser=models.parser, batch_size=args.batch_size, progress=progress,
                            description={"source": str(args.source.resolve())})
    progress.close()
    print(f"Avatar ready: {avatar.folder} ({avatar.num_frames} frames, "
          f"{len(avatar.track.face_frames)} with a face, mask {avatar.mask_mode})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _run_weights(args) -> None:
    from musetalk_lib.weights import COMPONENTS, RANDOM_MARKER

    root = Path(args.models_dir if args.weights_command != "random" else args.directory).expanduser()
    if args.weights_command == "random":
        from musetalk_lib.random_weights import write_random_weights

        write_random_weights(root, args.size, args.seed)
        print(f"Wrote RANDOM {args.size} weights to {root} (for tests and smoke runs: they do not lip-sync).")
        return
    if args.weights_command == "check":
        if (root / RANDOM_MARKER).is_file():
            print(f"NOTE: {root} holds RANDOM weights ({RANDOM_MARKER}).")
        missing = 0
        for component, items in COMPONENTS.items():
            for item in items:
                location = item.find(root)
                if location is None:
                    missing += 1
                    print(f"[missing] {component:15} {item.path}  <- {item.source}")
                else:
                    digest = "" if args.no_hash else f"  sha256 {_sha256(location)}"
                    print(f"[ok]      {component:15} {location.relative_to(root)}  {location.stat().st_size:,} B{digest}")
        print(f"{missing} file(s) missing under {root}." if missing else f"All files present under {root}.")
        return
    from musetalk_lib.download import download_weights

    download_weights(root, args.only, dry_run=args.dry_run)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``with`` block cleans up as for Ctrl+C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _split_finetune(argv: list[str]) -> tuple[list[str], list[str]]:
    """``[options] finetune ARGS...`` -> (``[options] finetune``, ARGS): ``training.finetune`` parses ARGS itself."""
    for index, token in enumerate(argv):
        if not token.startswith("-"):
            return (argv[:index + 1], argv[index + 1:]) if token == "finetune" else (argv, [])
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``musetalk`` console script; returns the exit status (``EXIT_*``)."""
    parser = build_parser()
    argv, finetune_arguments = _split_finetune(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    args.arguments = finetune_arguments
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(levelname)s: %(message)s")
    progress = TerminalProgress(enabled=not args.quiet)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        _run(args, progress)
    except KeyboardInterrupt:
        progress.close()
        print("musetalk: interrupted; partial files were removed.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        progress.close()
        print("musetalk: terminated; partial files were removed.", file=sys.stderr)
        return EXIT_TERMINATED
    except (FileNotFoundError, ValueError, ImportError, RuntimeError, OSError) as error:
        from musetalk_lib.pipeline import NoFaceError

        progress.close()
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOTHING_DUBBED if isinstance(error, NoFaceError) else EXIT_ERROR
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return EXIT_OK


def _run(args: argparse.Namespace, progress: TerminalProgress) -> None:
    if args.command == "dub":
        _run_dub(args, progress)
    elif args.command == "avatar":
        _run_avatar(args, progress)
    elif args.command == "weights":
        _run_weights(args)
    elif args.command == "lora":
        _run_lora(args)
    elif args.command == "finetune":
        _run_finetune(args.arguments)
    elif args.command == "queue":
        from .queue_client import run

        run(args)
    else:
        from .bench import run

        run(args)

