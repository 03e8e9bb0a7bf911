"""Example workflows: UI and API twins agree, and both match the node definitions."""

import json
import subprocess
import sys

import pytest
from pack import REPO, load_pack, node_classes

FOLDER = REPO / "workflows"
UI_FILES = sorted(FOLDER.glob("*.json"))
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# Interfaces of the core ComfyUI nodes the examples use (the server test checks them against a real ComfyUI).
CORE = {
    "LoadAudio": {"widgets": {"audio": ("STRING", {})}, "inputs": {}, "outputs": ["AUDIO"]},
    "LoadImage": {"widgets": {"image": ("STRING", {})}, "inputs": {}, "outputs": ["IMAGE", "MASK"]},
    "PreviewImage": {"widgets": {}, "inputs": {"images": "IMAGE"}, "outputs": [], "output_node": True},
}
MEDIA_COMBOS = {"file"}  # lists of files in the input folder: any name is allowed here


NODES = node_classes(load_pack())


def definition(class_type):
    if class_type in CORE:
        return CORE[class_type]
    assert class_type in NODES, f"unknown node type {class_type}"
    cls = NODES[class_type]
    declared = cls.INPUT_TYPES()
    specs = {**declared["required"], **declared.get("optional", {})}
    widgets = {n: s for n, s in specs.items() if isinstance(s[0], list) or s[0] in WIDGET_TYPES}
    return {
        "widgets": widgets,
        "inputs": {n: s[0] for n, s in specs.items() if n not in widgets},
        "required": set(declared["required"]),
        "outputs": list(cls.RETURN_TYPES),
        "output_node": cls.OUTPUT_NODE,
    }


def check_value(class_type, name, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"{class_type}.{name}={value!r}"
    if kind == "COMBO" or isinstance(kind, list):
        assert isinstance(value, str), where
        assert name in MEDIA_COMBOS or value in options["options"], where
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert options.get("min", value) <= value <= options.get("max", value), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and options.get("min", value) <= value <= options.get("max", value), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    else:
        assert isinstance(value, str), where


def test_there_are_four_example_workflows_with_api_twins():
    names = {path.stem for path in UI_FILES}
    assert len(names) >= 4
    assert names == {path.stem for path in (FOLDER / "api").glob("*.json")}


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_api_workflow_matches_the_nodes(path):
    prompt = json.loads((FOLDER / "api" / path.name).read_text())
    assert any(definition(node["class_type"]).get("output_node") for node in prompt.values())
    for node_id, node in prompt.items():
        spec = definition(node["class_type"])
        inputs = node["inputs"]
        for name, value in inputs.items():
            if isinstance(value, list):
                source, slot = value
                source_type = definition(prompt[source]["class_type"])["outputs"][slot]
                target_type = spec["inputs"].get(name) or spec["widgets"][name][0]
                assert source_type == target_type, f"{node_id}.{name}: {source_type} -> {target_type}"
            else:
                assert name in spec["widgets"], f"{node_id}: unknown widget {name}"
                check_value(node["class_type"], name, spec["widgets"][name], value)
        for name in spec.get("required", set()):
            assert name in inputs, f"{node_id} ({node['class_type']}) misses required input {name}"


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_is_the_api_twin(path):
    ui = json.loads(path.read_text())
    prompt = json.loads((FOLDER / "api" / path.name).read_text())
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == len(ui["links"])
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] != "Note"}  # notes are frontend-only
    assert set(nodes) == set(prompt)
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in nodes.items():
        api = prompt[node_id]
        assert node["type"] == api["class_type"]
        spec = definition(node["type"])
        values = dict(zip(spec["widgets"], node["widgets_values"]))
        assert len(node["widgets_values"]) >= len(spec["widgets"]), f"{node_id}: widgets_values too short"
        for name, value in values.items():
            if not isinstance(api["inputs"].get(name), list):
                assert api["inputs"][name] == value, f"{node_id}.{name}: UI {value!r} != API {api['inputs'][name]!r}"
        for slot, entry in enumerate(node["inputs"]):
            if entry["link"] is None:
                continue
            _, source, source_slot, target, target_slot, kind = links[entry["link"]]
            assert (target, target_slot) == (node["id"], slot)
            assert api["inputs"][entry["name"]] == [str(source), source_slot]
            assert nodes[str(source)]["outputs"][source_slot]["type"] == kind == entry["type"]
            assert entry["link"] in nodes[str(source)]["outputs"][source_slot]["links"]
        linked = {name for name, value in api["inputs"].items() if isinstance(value, list)}
        assert linked == {entry["name"] for entry in node["inputs"] if entry["link"] is not None}


def test_workflows_are_up_to_date(tmp_path):
    """The committed files are exactly what scripts/build_workflows.py writes from the node definitions."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build_workflows.py"), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    committed = {p.relative_to(FOLDER): p.read_bytes() for p in FOLDER.rglob("*.json")}
    built = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.json")}
    assert committed == built, "run `python scripts/build_workflows.py` and commit the result"


# The frontend's graph canvas in a 1920x1000 window (frontend 1.27.10: right of a 64 px side bar, below 78 px of
# tabs and menu); test_comfyui_frontend.py checks the same in the real frontend.
CANVAS = (1856, 922)
READABLE_ZOOM = 0.6
NODE_TITLE = 30  # the frontend draws a node's title bar above its position


def boxes_of(workflow: dict) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(name, (x, y, width, height)) of every node, its title bar included, and of every group."""
    nodes = [(f"node {n['id']}", (n["pos"][0], n["pos"][1] - NODE_TITLE, n["size"][0], n["size"][1] + NODE_TITLE))
             for n in workflow["nodes"]]
    return nodes + [(f"group {g['title']}", tuple(g["bounding"])) for g in workflow["groups"]]


def inside(box, outer) -> bool:
    return outer[0] <= box[0] and outer[1] <= box[1] and box[0] + box[2] <= outer[0] + outer[2] and \
        box[1] + box[3] <= outer[1] + outer[3]


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_layout_is_readable_at_the_default_view(path):
    """Nothing under the menu bar or off-canvas at the saved zoom (readable: 0.6 or more); nodes (title bars included, notes too) and
    step groups do not overlap; every node is in exactly one step group; previews have room below the widgets."""
    workflow = json.loads(path.read_text())
    scale, (dx, dy) = workflow["extra"]["ds"]["scale"], workflow["extra"]["ds"]["offset"]
    assert READABLE_ZOOM <= scale <= 1
    for name, (x, y, width, height) in boxes_of(workflow):
        top_left = ((x + dx) * scale, (y + dy) * scale)
        bottom_right = ((x + width + dx) * scale, (y + height + dy) * scale)
        assert top_left[0] >= 0 and top_left[1] >= 0, f"{name} is under the menu bar or off the left edge"
        assert bottom_right[0] <= CANVAS[0] and bottom_right[1] <= CANVAS[1], f"{name} is off-canvas"
    nodes = [(name, box) for name, box in boxes_of(workflow) if name.startswith("node")]
    groups = [(name, box) for name, box in boxes_of(workflow) if name.startswith("group")]
    for items in (nodes, groups):
        for index, (name, box) in enumerate(items):
            for other, other_box in items[index + 1:]:
                assert not overlap(box, other_box), f"{name} overlaps {other}"
    for name, box in nodes:
        holders = [group for group, group_box in groups if inside(box, group_box)]
        assert len(holders) == 1, f"{name} is in {len(holders)} step groups"
    for node in workflow["nodes"]:
        if node["type"] in ("MuseTalkVideoCombine", "PreviewImage"):
            assert node["size"][1] >= 400, f"node {node['id']}: its preview needs room below the widgets"


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_every_step_has_one_note(path):
    """Each step group holds exactly one core Note node, with text, above its other nodes. Notes are
    frontend-only (virtual: no sockets, left out by the frontend's graphToPrompt), so the API twin has none."""
    workflow = json.loads(path.read_text())
    prompt = json.loads((FOLDER / "api" / path.name).read_text())
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    for group in workflow["groups"]:
        held = [n for n in notes if inside((*n["pos"], *n["size"]), group["bounding"])]
        assert len(held) == 1, f"group {group['title']} holds {len(held)} notes"
        (note,) = held
        others = [n for n in workflow["nodes"] if n["type"] != "Note" and inside((*n["pos"], *n["size"]),
                                                                                   group["bounding"])]
        assert others and all(note["pos"][1] + note["size"][1] < n["pos"][1] for n in others), group["title"]
        (text,) = note["widgets_values"]
        fits = 0.75 * note["size"][0]  # five lines of the frontend's default textarea font
        assert isinstance(text, str) and 40 <= len(text) <= fits, f"group {group['title']}: note of {len(text)} chars"
    assert len(notes) == len(workflow["groups"])
    assert all(n["inputs"] == [] and n["outputs"] == [] for n in notes)
    assert not any(n["class_type"] == "Note" for n in prompt.values())
    assert not {str(n["id"]) for n in notes} & set(prompt)


SAVED = REPO / "tests" / "data" / "saved_workflows"  # the workflows as shipped by pack 0.1 (V1 nodes)
SAVED_UI = sorted(SAVED.glob("*.json"))


@pytest.mark.parametrize("path", SAVED_UI, ids=[p.stem for p in SAVED_UI])
def test_workflows_saved_before_the_v3_nodes_still_load(path):
    """Same node ids and input names: an older API prompt passes ComfyUI's input checks, an older UI graph's
    widget values still line up with the widgets (new widgets come last, with defaults)."""
    prompt = json.loads((SAVED / "api" / path.name).read_text())
    for node_id, node in prompt.items():
        spec = definition(node["class_type"])
        for name, value in node["inputs"].items():
            assert name in spec["widgets"] or name in spec["inputs"], f"{node_id}: input {name} is gone"
            if not isinstance(value, list):
                check_value(node["class_type"], name, spec["widgets"][name], value)
        missing = spec.get("required", set()) - set(node["inputs"])
        assert not missing, f"{node_id} ({node['class_type']}) now requires {missing}"
    for node in json.loads(path.read_text())["nodes"]:
        spec = definition(node["type"])
        values = node["widgets_values"][:len(spec["widgets"])]
        for (name, widget), value in zip(spec["widgets"].items(), values):
            check_value(node["type"], name, widget, value)
