#!/usr/bin/env python3
"""Write the example workflows: ``workflows/<name>.json`` (UI format) and ``workflows/api/<name>.json`` (API format).

Each graph is declared once below; widget order and defaults come from the
nodes' own schemas (V3, read through ``INPUT_TYPES``), so both formats always match the node definitions.
Each step is a titled group that opens with a core ``Note`` node telling the user what the step does and
what to adjust. Notes are frontend-only (virtual) nodes: the API format has none, as the frontend's own
``graphToPrompt`` leaves them out.
Without ComfyUI on the path the schemas are read through the tests' minimal ``comfy_api`` fake.
Run after changing a node's inputs: ``python scripts/build_workflows.py [OUTPUT_DIR]``
(default: the repository's ``workflows/``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_ID = "musetalk-lipsync"
SOCKET_WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# The graph canvas of the frontend (1.27.10) in a 1920x1000 window: right of its 64 px side bar, below its 78 px
# of tabs and menu. Each workflow opens at the largest zoom up to ZOOM at which all of it shows there.
CANVAS = (1856, 922)
ZOOM = 0.65
CANVAS_MARGIN = 10  # screen pixels left free around the graph
GROUP_PADDING = 30
GROUP_TITLE = 40
NODE_TITLE = 30  # the frontend draws a node's title bar above its position
NOTE_HEIGHT = 110  # five lines of the frontend's default textarea font: about 0.75 characters per unit of width
NOTE_GAP = NODE_TITLE + 30  # between a step's note and the nodes below it
NOTE_COLOR = {"color": "#432", "bgcolor": "#653"}  # the frontend's yellow, as it saves a new Note
PREVIEW_ROOM = 320  # below the widgets of nodes that show their images or video after a run
# Heights the frontend (1.27.10) gives nodes with an upload widget once it shows the chosen file (example media).
UPLOAD_PREVIEW_HEIGHT = {"MuseTalkLoadAvatar": 694, "MuseTalkDub": 850, "LoadAudio": 136, "LoadImage": 314}

# The few core ComfyUI nodes the examples use: widget names and output sockets.
CORE_NODES = {
    "LoadAudio": {"title": "Load Audio", "widgets": {"audio": ""}, "outputs": [("AUDIO", "AUDIO")]},
    "LoadImage": {"title": "Load Image", "widgets": {"image": ""}, "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
                  "ui_extra": ["image"]},
    "PreviewImage": {"title": "Preview Image", "widgets": {}, "inputs": [("images", "IMAGE")], "outputs": []},
}

MODEL_HINTS = {
    "MuseTalkUNetLoader": [("musetalkV15/unet.pth", "TMElyralab/MuseTalk", "musetalkV15/unet.pth"),
                           ("musetalkV15/musetalk.json", "TMElyralab/MuseTalk", "musetalkV15/musetalk.json")],
    "MuseTalkVAELoader": [("sd-vae/diffusion_pytorch_model.bin", "stabilityai/sd-vae-ft-mse",
                           "diffusion_pytorch_model.bin"), ("sd-vae/config.json", "stabilityai/sd-vae-ft-mse", "config.json")],
    "MuseTalkWhisperLoader": [("whisper/pytorch_model.bin", "openai/whisper-tiny", "pytorch_model.bin"),
                              ("whisper/config.json", "openai/whisper-tiny", "config.json"),
                              ("whisper/preprocessor_config.json", "openai/whisper-tiny", "preprocessor_config.json")],
    "MuseTalkFaceParserLoader": [("face-parse-bisent/79999_iter.pth", "ManyOtherFunctions/face-parse-bisent",
                                  "79999_iter.pth")],
}


def load_pack():
    if importlib.util.find_spec("comfy_api") is None:
        sys.path.insert(0, str(ROOT / "tests" / "comfy_fake"))
    spec = importlib.util.spec_from_file_location("musetalk_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["musetalk_pack"] = module
    spec.loader.exec_module(module)
    return module


PACK = load_pack()
NODE_CLASSES = {cls.GET_SCHEMA().node_id: cls for cls in PACK.nodes.NODES}


def is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in SOCKET_WIDGETS


def interface(class_type: str) -> dict:
    """Widgets (name -> default, in order), socket inputs and outputs of a node type."""
    if class_type in CORE_NODES:
        core = CORE_NODES[class_type]
        return {"widgets": dict(core["widgets"]), "inputs": core.get("inputs", []), "outputs": core["outputs"],
                "ui_extra": core.get("ui_extra", [])}
    cls = NODE_CLASSES[class_type]
    declared = cls.INPUT_TYPES()
    specs = {**declared["required"], **declared.get("optional", {})}
    widgets = {name: spec[1].get("default", spec[1]["options"][0] if "options" in spec[1] else None)
               for name, spec in specs.items() if is_widget(spec)}
    inputs = [(name, spec[0]) for name, spec in specs.items() if not is_widget(spec)]
    outputs = list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
    return {"widgets": widgets, "inputs": inputs, "outputs": outputs, "ui_extra": []}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    title: str | None = None


@dataclass
class Step:
    """One step of a workflow: a titled group of nodes, with a note above them for the user."""

    title: str
    node_ids: list[int]
    note: str  # what the step does and what to adjust; leave NOTE_GAP + NOTE_HEIGHT free above the nodes


@dataclass
class Graph:
    name: str
    description: str
    nodes: list[Node]
    steps: list[Step]


def loaders() -> list[Node]:
    """The four model loaders, two by two under the Models note."""
    return [
        Node(1, "MuseTalkUNetLoader", (0, 170), {"version": "v15"}),
        Node(2, "MuseTalkVAELoader", (400, 170)),
        Node(3, "MuseTalkWhisperLoader", (0, 366)),
        Node(4, "MuseTalkFaceParserLoader", (400, 366)),
    ]


MODELS = Step("1. Models", [1, 2, 3, 4],
              "Loads MuseTalk from models/musetalk: `musetalk weights download` fetches the real weights "
              "(`musetalk weights random` writes test weights: the loaders then say RANDOM and the mouth does not "
              "follow the speech). The face parser is optional: without its weights Blend uses the landmark mask "
              "and says so. dtype auto = fp16 on a GPU, fp32 on the CPU.")
SAVE_NOTE = ("Writes an H.264 + AAC MP4 to output/MuseTalk and plays it here after the run (crf: lower = "
             "better, bigger). Frames without a face, RANDOM weights and fallbacks are reported on the nodes above.")
FACE_NOTE = ("Mouth cut off or barely opening? Change bbox_shift (+ moves the mask edge down: more opening; "
             "- up). face_backend auto tracks the face offline; frames without a face pass through unchanged and "
             "are listed on the node.")
DUB_NOTE = ("Tracks the face, then draws and pastes the mouth. To tune fast, connect MuseTalk Dub Options to "
            "options and set preview_seconds (e.g. 3). Mouth cut off or barely opening? Change bbox_shift (+ = more "
            "opening).")

GRAPHS = [
    Graph("musetalk_dub_video_blocks",
          "Dub a video with a speech file, every MuseTalk block wired separately; frames stream to the encoder.",
          loaders() + [
              Node(5, "LoadAudio", (0, 770), {"audio": "speech_16k_mono.wav"}),
              Node(6, "MuseTalkLoadAvatar", (800, 170), {"file": "talking_closeup.mp4"}),
              Node(7, "PreviewImage", (1200, 170), links={"images": (6, 1)}, title="Crop boxes"),
              Node(8, "MuseTalkWhisperAudioFeatures", (400, 770), links={"whisper": (3, 0), "audio": (5, 0), "fps": (6, 2)}),
              Node(9, "MuseTalkVAEEncodeMaskedFace", (1200, 634), links={"avatar": (6, 0), "vae": (2, 0)}),
              Node(10, "MuseTalkUNet", (1600, 170), links={"unet": (1, 0), "face_latents": (9, 0), "audio_features": (8, 0)}),
              Node(11, "MuseTalkBlendMouth", (2000, 170),
                   links={"predicted_latents": (10, 0), "vae": (2, 0), "face_parser": (4, 0)}),
              Node(12, "MuseTalkVideoCombine", (2400, 170), {"filename_prefix": "MuseTalk/dub_blocks"},
                   links={"frames": (11, 1), "audio": (5, 0), "fps": (11, 2)}),
          ], [
              MODELS,
              Step("2. Speech", [5, 8],
                   "The speech to lip-sync (WAV, FLAC or MP3 in input/, any sample rate). Whisper Audio Features "
                   "turns it into audio features per video frame: keep its fps connected to Load Avatar's fps."),
              Step("3. Face", [6, 7, 9],
                   "Load Avatar finds the face in every frame of the video; Crop boxes shows what will be dubbed "
                   "(red border: no face). " + FACE_NOTE),
              Step("4. Lip sync", [10, 11],
                   "UNet draws a mouth per frame of speech; Blend Mouth pastes it into the frames. mask_mode jaw "
                   "needs the face parser (else landmarks is used). length_policy: what to do when the speech is "
                   "longer than the video. Out of memory: lower batch_size."),
              Step("5. Save", [12], SAVE_NOTE),
          ]),
    Graph("musetalk_dub_video_one_node",
          "Dub a video with a speech file using the single MuseTalk Dub node.",
          loaders() + [
              Node(5, "LoadAudio", (0, 770), {"audio": "speech_16k_mono.wav"}),
              Node(6, "MuseTalkDub", (800, 170), {"file": "talking_closeup.mp4"},
                   links={"unet": (1, 0), "vae": (2, 0), "whisper": (3, 0), "audio": (5, 0), "face_parser": (4, 0)}),
              Node(7, "MuseTalkVideoCombine", (1200, 170), {"filename_prefix": "MuseTalk/dub_one_node"},
                   links={"frames": (6, 3), "audio": (6, 1), "fps": (6, 2)}),
          ], [
              MODELS,
              Step("2. Speech", [5], "The speech to lip-sync: WAV, FLAC or MP3 in input/, any sample rate."),
              Step("3. Dub", [6],
                   DUB_NOTE),
              Step("4. Save", [7], SAVE_NOTE),
          ]),
    Graph("musetalk_dub_still_image",
          "Make a still portrait talk: a core Load Image batch of one frame goes into MuseTalk Dub.",
          loaders() + [
              Node(5, "LoadAudio", (0, 770), {"audio": "speech_short.wav"}),
              Node(6, "LoadImage", (400, 770), {"image": "face_still.png"}),
              Node(7, "MuseTalkDub", (800, 170), {"fps": 25.0, "length_policy": "loop"},
                   links={"unet": (1, 0), "vae": (2, 0), "whisper": (3, 0), "audio": (5, 0), "images": (6, 0),
                          "face_parser": (4, 0)}),
              Node(8, "MuseTalkVideoCombine", (1200, 170), {"filename_prefix": "MuseTalk/still"},
                   links={"images": (7, 0), "audio": (7, 1), "fps": (7, 2)}),
          ], [
              MODELS,
              Step("2. Speech and portrait", [5, 6],
                   "The speech, and a portrait with one clearly visible, frontal face. The video is as long as "
                   "the speech: Dub repeats the still (length_policy loop) at its fps."),
              Step("3. Dub", [7],
                   DUB_NOTE),
              Step("4. Save", [8], SAVE_NOTE),
          ]),
    Graph("musetalk_avatar_two_speeches",
          "Prepare an avatar once (faces and latents) and dub it with two different speech files.",
          loaders() + [
              Node(5, "MuseTalkLoadAvatar", (800, 170), {"file": "talking_avatar.mp4"}),
              Node(6, "MuseTalkVAEEncodeMaskedFace", (1200, 170), links={"avatar": (5, 0), "vae": (2, 0)}),
              Node(7, "LoadAudio", (0, 770), {"audio": "speech_16k_mono.wav"}, title="Speech 1"),
              Node(8, "LoadAudio", (0, 1070), {"audio": "speech_44k_stereo.wav"}, title="Speech 2"),
              Node(9, "MuseTalkWhisperAudioFeatures", (400, 770), links={"whisper": (3, 0), "audio": (7, 0), "fps": (5, 2)}),
              Node(10, "MuseTalkWhisperAudioFeatures", (400, 1070), links={"whisper": (3, 0), "audio": (8, 0), "fps": (5, 2)}),
              Node(11, "MuseTalkUNet", (1600, 170), links={"unet": (1, 0), "face_latents": (6, 0), "audio_features": (9, 0)}),
              Node(12, "MuseTalkUNet", (1600, 790), links={"unet": (1, 0), "face_latents": (6, 0), "audio_features": (10, 0)}),
              Node(13, "MuseTalkBlendMouth", (2000, 170),
                   links={"predicted_latents": (11, 0), "vae": (2, 0), "face_parser": (4, 0)}),
              Node(14, "MuseTalkBlendMouth", (2000, 790),
                   links={"predicted_latents": (12, 0), "vae": (2, 0), "face_parser": (4, 0)}),
              Node(15, "MuseTalkVideoCombine", (2400, 170), {"filename_prefix": "MuseTalk/avatar_speech1"},
                   links={"frames": (13, 1), "audio": (7, 0), "fps": (13, 2)}),
              Node(16, "MuseTalkVideoCombine", (2400, 790), {"filename_prefix": "MuseTalk/avatar_speech2"},
                   links={"frames": (14, 1), "audio": (8, 0), "fps": (14, 2)}),
          ], [
              MODELS,
              Step("2. Avatar", [5, 6],
                   "Prepared once for every speech: Load Avatar finds the face in each frame, VAE Encode Masked "
                   "Face encodes it. " + FACE_NOTE),
              Step("3. Speeches", [7, 8, 9, 10],
                   "One Load Audio and one Whisper Audio Features per speech (WAV, FLAC or MP3 in input/). For a "
                   "third speech, copy a row here and in the next two steps."),
              Step("4. Lip sync", [11, 12, 13, 14],
                   "One row per speech, both reusing the prepared avatar. mask_mode jaw needs the face parser "
                   "(else landmarks is used). length_policy: what to do when a speech is longer than the video. "
                   "Out of memory: lower batch_size."),
              Step("5. Save", [15, 16], SAVE_NOTE),
          ]),
]


def widget_values(node: Node, spec: dict) -> dict:
    unknown = set(node.widgets) - set(spec["widgets"])
    if unknown:
        raise ValueError(f"node {node.id} ({node.type}) has no widgets {sorted(unknown)}")
    return {**spec["widgets"], **node.widgets}


def api_format(graph: Graph) -> dict:
    prompt = {}
    for node in graph.nodes:
        spec = interface(node.type)
        inputs = {name: value for name, value in widget_values(node, spec).items() if name not in node.links}
        inputs.update({name: [str(source), slot] for name, (source, slot) in node.links.items()})
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": node.title or display_name(node.type)}}
    return prompt


def display_name(class_type: str) -> str:
    if class_type in CORE_NODES:
        return CORE_NODES[class_type]["title"]
    return NODE_CLASSES[class_type].GET_SCHEMA().display_name


def ui_format(graph: Graph) -> dict:
    specs = {node.id: interface(node.type) for node in graph.nodes}
    links, outgoing = [], {}
    for node in graph.nodes:
        for name, (source, slot) in sorted(node.links.items()):
            link_type = specs[source]["outputs"][slot][1]
            links.append([len(links) + 1, source, slot, node.id, name, link_type])
            outgoing.setdefault((source, slot), []).append(len(links))
    nodes = []
    for order, node in enumerate(graph.nodes):
        spec = specs[node.id]
        values = widget_values(node, spec)
        inputs = [{"name": name, "type": kind, "link": None} for name, kind in spec["inputs"]]
        inputs += [{"name": name, "type": kind_of(node.type, name), "widget": {"name": name}, "link": None}
                   for name in values if name in node.links]
        for link in links:
            if link[3] == node.id:
                position = next(i for i, entry in enumerate(inputs) if entry["name"] == link[4])
                inputs[position]["link"] = link[0]
        outputs = [{"name": name, "type": kind, "links": outgoing.get((node.id, slot), []), "slot_index": slot}
                   for slot, (name, kind) in enumerate(spec["outputs"])]
        properties = {"Node name for S&R": node.type,
                      "cnr_id": "comfy-core" if node.type in CORE_NODES else PACK_ID}
        if node.type in MODEL_HINTS:
            properties["models"] = [
                {"name": name, "url": f"https://huggingface.co/{repo}/resolve/main/{file}", "directory": "musetalk"}
                for name, repo, file in MODEL_HINTS[node.type]]
        entry = {
            "id": node.id, "type": node.type, "pos": list(node.pos),
            "size": node_size(node.type, len(values) + max(len(inputs), len(outputs))),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": properties, "widgets_values": list(values.values()) + spec["ui_extra"],
        }
        if node.title:
            entry["title"] = node.title
        nodes.append(entry)
    # UI links name the target slot by index into the node's inputs list.
    for link in links:
        target = next(entry for entry in nodes if entry["id"] == link[3])
        link[4] = next(i for i, entry in enumerate(target["inputs"]) if entry["name"] == link[4])
    notes = step_notes(graph.steps, nodes)
    groups = [group(step.title, step.node_ids + [note["id"]], nodes + notes) for step, note in zip(graph.steps, notes)]
    return {
        "last_node_id": max(node["id"] for node in nodes + notes),
        "last_link_id": len(links),
        "nodes": nodes + notes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": opening_view(groups), "info": {"description": graph.description}},
        "version": 0.4,
    }


def step_notes(steps: list[Step], nodes: list[dict]) -> list[dict]:
    """A core Note node above the nodes of each step, as wide as they are, numbered after the last node."""
    boxes = {node["id"]: (*node["pos"], *node["size"]) for node in nodes}
    next_id = max(boxes) + 1
    notes = []
    for order, step in enumerate(steps, start=len(nodes)):
        left = min(boxes[i][0] for i in step.node_ids)
        top = min(boxes[i][1] for i in step.node_ids) - NOTE_GAP - NOTE_HEIGHT
        right = max(boxes[i][0] + boxes[i][2] for i in step.node_ids)
        notes.append({
            "id": next_id + len(notes), "type": "Note", "pos": [left, top], "size": [right - left, NOTE_HEIGHT],
            "flags": {}, "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [step.note], **NOTE_COLOR,
        })
    return notes


def group(title: str, ids: list[int], nodes: list[dict]) -> dict:
    """One titled box around the nodes of a step."""
    boxes = {node["id"]: (*node["pos"], *node["size"]) for node in nodes}
    left = min(boxes[i][0] for i in ids) - GROUP_PADDING
    top = min(boxes[i][1] for i in ids) - GROUP_PADDING - GROUP_TITLE
    right = max(boxes[i][0] + boxes[i][2] for i in ids) + GROUP_PADDING
    bottom = max(boxes[i][1] + boxes[i][3] for i in ids) + GROUP_PADDING
    return {"title": title, "bounding": [left, top, right - left, bottom - top], "color": "#3f789e",
            "font_size": 24, "flags": {}}


def opening_view(groups: list[dict]) -> dict:
    """Zoom and offset (canvas units) that show every group whole on the frontend's canvas, at ZOOM at most."""
    left = min(g["bounding"][0] for g in groups)
    top = min(g["bounding"][1] for g in groups)
    width = max(g["bounding"][0] + g["bounding"][2] for g in groups) - left
    height = max(g["bounding"][1] + g["bounding"][3] for g in groups) - top
    room = (CANVAS[0] - 2 * CANVAS_MARGIN, CANVAS[1] - 2 * CANVAS_MARGIN)
    scale = min(ZOOM, int(100 * min(room[0] / width, room[1] / height)) / 100)
    return {"scale": scale, "offset": [round(CANVAS_MARGIN / scale - left), round(CANVAS_MARGIN / scale - top)]}


def node_size(class_type: str, rows: int) -> list[int]:
    """Width and height of a node: nodes that show images or a video leave room below their widgets for it, and
    nodes with an upload widget are as tall as the frontend makes them to show the chosen file."""
    height = 60 + 26 * rows
    if class_type in ("MuseTalkVideoCombine", "PreviewImage"):
        height += PREVIEW_ROOM
    return [320, max(height, UPLOAD_PREVIEW_HEIGHT.get(class_type, 0))]


def kind_of(class_type: str, name: str) -> str:
    declared = NODE_CLASSES[class_type].INPUT_TYPES()
    kind = {**declared["required"], **declared.get("optional", {})}[name][0]
    return "COMBO" if isinstance(kind, list) else kind


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "workflows"
    (folder / "api").mkdir(parents=True, exist_ok=True)
    for graph in GRAPHS:
        (folder / f"{graph.name}.json").write_text(json.dumps(ui_format(graph), indent=2) + "\n", encoding="utf-8")
        (folder / "api" / f"{graph.name}.json").write_text(json.dumps(api_format(graph), indent=2) + "\n",
                                                           encoding="utf-8")
        print(f"wrote {folder / graph.name}.json and {folder / 'api' / graph.name}.json")


if __name__ == "__main__":
    main()
