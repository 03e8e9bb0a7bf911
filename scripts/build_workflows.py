#!/usr/bin/env python3
"""Write the example workflows: ``workflows/<name>.json`` (UI format) and ``workflows/api/<name>.json`` (API format).

Each graph is declared once below; widget order and defaults come from the
nodes' own schemas (V3, read through ``INPUT_TYPES``), so both formats always match the node definitions.
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
# The canvas offset and zoom the workflows open with: the top row clears the frontend's menu bar.
VIEW = {"scale": 0.65, "offset": [60, 150]}
GROUP_PADDING = 30
GROUP_TITLE = 40

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
class Graph:
    name: str
    description: str
    nodes: list[Node]
    steps: list[tuple[str, list[int]]]  # (group title, node ids): one group per step of the workflow


def loaders(x: int = 0, y: int = 0) -> list[Node]:
    return [
        Node(1, "MuseTalkUNetLoader", (x, y), {"version": "v15"}),
        Node(2, "MuseTalkVAELoader", (x, y + 190)),
        Node(3, "MuseTalkWhisperLoader", (x, y + 360)),
        Node(4, "MuseTalkFaceParserLoader", (x, y + 530)),
    ]


GRAPHS = [
    Graph("musetalk_dub_video_blocks",
          "Dub a video with a speech file, every MuseTalk block wired separately; frames stream to the encoder.",
          loaders() + [
              Node(5, "LoadAudio", (0, 760), {"audio": "speech_16k_mono.wav"}),
              Node(6, "MuseTalkLoadAvatar", (400, 0), {"file": "talking_closeup.mp4"}),
              Node(7, "PreviewImage", (800, 0), links={"images": (6, 1)}, title="Crop boxes"),
              Node(8, "MuseTalkWhisperAudioFeatures", (400, 810), links={"whisper": (3, 0), "audio": (5, 0), "fps": (6, 2)}),
              Node(9, "MuseTalkVAEEncodeMaskedFace", (800, 330), links={"avatar": (6, 0), "vae": (2, 0)}),
              Node(10, "MuseTalkUNet", (1200, 330), links={"unet": (1, 0), "face_latents": (9, 0), "audio_features": (8, 0)}),
              Node(11, "MuseTalkBlendMouth", (1600, 330),
                   links={"predicted_latents": (10, 0), "vae": (2, 0), "face_parser": (4, 0)}),
              Node(12, "MuseTalkVideoCombine", (2000, 330), {"filename_prefix": "MuseTalk/dub_blocks"},
                   links={"frames": (11, 1), "audio": (5, 0), "fps": (11, 2)}),
          ], [("1. Models", [1, 2, 3, 4]), ("2. Speech", [5, 8]), ("3. Face", [6, 7, 9]), ("4. Lip sync", [10, 11]), ("5. Save", [12])]),
    Graph("musetalk_dub_video_one_node",
          "Dub a video with a speech file using the single MuseTalk Dub node.",
          loaders() + [
              Node(5, "LoadAudio", (0, 760), {"audio": "speech_16k_mono.wav"}),
              Node(6, "MuseTalkDub", (400, 0), {"file": "talking_closeup.mp4"},
                   links={"unet": (1, 0), "vae": (2, 0), "whisper": (3, 0), "audio": (5, 0), "face_parser": (4, 0)}),
              Node(7, "MuseTalkVideoCombine", (800, 0), {"filename_prefix": "MuseTalk/dub_one_node"},
                   links={"frames": (6, 3), "audio": (6, 1), "fps": (6, 2)}),
          ], [("1. Models", [1, 2, 3, 4]), ("2. Speech", [5]), ("3. Dub", [6]), ("4. Save", [7])]),
    Graph("musetalk_dub_still_image",
          "Make a still portrait talk: a core Load Image batch of one frame goes into MuseTalk Dub.",
          loaders() + [
              Node(5, "LoadAudio", (0, 760), {"audio": "speech_short.wav"}),
              Node(6, "LoadImage", (0, 950), {"image": "face_still.png"}),
              Node(7, "MuseTalkDub", (400, 0), {"fps": 25.0, "length_policy": "loop"},
                   links={"unet": (1, 0), "vae": (2, 0), "whisper": (3, 0), "audio": (5, 0), "images": (6, 0),
                          "face_parser": (4, 0)}),
              Node(8, "MuseTalkVideoCombine", (800, 0), {"filename_prefix": "MuseTalk/still"},
                   links={"images": (7, 0), "audio": (7, 1), "fps": (7, 2)}),
          ], [("1. Models", [1, 2, 3, 4]), ("2. Speech and portrait", [5, 6]), ("3. Dub", [7]), ("4. Save", [8])]),
    Graph("musetalk_avatar_two_speeches",
          "Prepare an avatar once (faces and latents) and dub it with two different speech files.",
          loaders() + [
              Node(5, "MuseTalkLoadAvatar", (400, 0), {"file": "talking_avatar.mp4"}),
              Node(6, "MuseTalkVAEEncodeMaskedFace", (800, 0), links={"avatar": (5, 0), "vae": (2, 0)}),
              Node(7, "LoadAudio", (0, 760), {"audio": "speech_16k_mono.wav"}, title="Speech 1"),
              Node(8, "LoadAudio", (0, 950), {"audio": "speech_44k_stereo.wav"}, title="Speech 2"),
              Node(9, "MuseTalkWhisperAudioFeatures", (400, 810), links={"whisper": (3, 0), "audio": (7, 0), "fps": (5, 2)}),
              Node(10, "MuseTalkWhisperAudioFeatures", (400, 1110), links={"whisper": (3, 0), "audio": (8, 0), "fps": (5, 2)}),
              Node(11, "MuseTalkUNet", (1200, 300), links={"unet": (1, 0), "face_latents": (6, 0), "audio_features": (9, 0)}),
              Node(12, "MuseTalkUNet", (1200, 700), links={"unet": (1, 0), "face_latents": (6, 0), "audio_features": (10, 0)}),
              Node(13, "MuseTalkBlendMouth", (1600, 300),
                   links={"predicted_latents": (11, 0), "vae": (2, 0), "face_parser": (4, 0)}),
              Node(14, "MuseTalkBlendMouth", (1600, 700),
                   links={"predicted_latents": (12, 0), "vae": (2, 0), "face_parser": (4, 0)}),
              Node(15, "MuseTalkVideoCombine", (2000, 0), {"filename_prefix": "MuseTalk/avatar_speech1"},
                   links={"frames": (13, 1), "audio": (7, 0), "fps": (13, 2)}),
              Node(16, "MuseTalkVideoCombine", (2000, 700), {"filename_prefix": "MuseTalk/avatar_speech2"},
                   links={"frames": (14, 1), "audio": (8, 0), "fps": (14, 2)}),
          ], [("1. Models", [1, 2, 3, 4]), ("2. Avatar", [5, 6]), ("3. Speeches", [7, 8, 9, 10]), ("4. Lip sync", [11, 12, 13, 14]), ("5. Save", [15, 16])]),
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
    return {
        "last_node_id": max(node.id for node in graph.nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": groups(graph, nodes),
        "config": {},
        "extra": {"ds": VIEW, "info": {"description": graph.description}},
        "version": 0.4,
    }


def groups(graph: Graph, nodes: list[dict]) -> list[dict]:
    """One titled box around the nodes of each step."""
    boxes = {node["id"]: (*node["pos"], *node["size"]) for node in nodes}
    result = []
    for title, ids in graph.steps:
        left = min(boxes[i][0] for i in ids) - GROUP_PADDING
        top = min(boxes[i][1] for i in ids) - GROUP_PADDING - GROUP_TITLE
        right = max(boxes[i][0] + boxes[i][2] for i in ids) + GROUP_PADDING
        bottom = max(boxes[i][1] + boxes[i][3] for i in ids) + GROUP_PADDING
        result.append({"title": title, "bounding": [left, top, right - left, bottom - top], "color": "#3f789e",
                       "font_size": 24, "flags": {}})
    return result


def node_size(class_type: str, rows: int) -> list[int]:
    """Width and height of a node: output nodes leave room below their widgets for the video preview."""
    height = 60 + 26 * rows
    return [320, height + 360] if class_type == "MuseTalkVideoCombine" else [320, height]


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
