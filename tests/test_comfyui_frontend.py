"""The UI workflows in workflows/*.json inside the real ComfyUI frontend, in a headless Chromium.

Each workflow is loaded with the frontend's own ``app.loadGraphData``. Then the live graph must have
(a) no missing node types and no warning dialog, (b) every widget holding the value its API twin
(workflows/api/<name>.json) gives that input, (c) every link of the file between the same nodes and slots,
and (d) ``app.graphToPrompt()`` must give the API twin back (the Note nodes, frontend-only, left out) and
(e) every Note must show its text, and (f) at the view the file opens with in a 1920x1000 window everything is on
the canvas, below the menu bar, without overlaps (node sizes as the frontend made them). Two screenshots per workflow go to the test's tmp dir: the view the file
opens with in a 1920x1000 window (``<name>_default_view.png``) and the whole graph framed (``<name>.png``).

Skipped unless ``COMFYUI_PATH`` points at a ComfyUI checkout, a Chromium executable exists
(``CHROMIUM_PATH``, default /usr/bin/chromium) and the ``playwright`` package is installed (its own
browser downloads are not used). ``COMFYUI_PYTHON`` runs the server as in ``test_comfyui_server.py``. Example:

    COMFYUI_PATH=/work/comfyui COMFYUI_PYTHON=/work/comfyui-venv/bin/python \\
        .venv/bin/python -m pytest -q tests/test_comfyui_frontend.py
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from comfyui_support import ComfyUIServer, chromium, chromium_executable, open_frontend, running_server
from media_dir import MEDIA

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
COMFYUI = os.environ.get("COMFYUI_PATH")
CHROMIUM = chromium_executable()
STARTUP_TIMEOUT = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "300"))
PAGE_TIMEOUT = float(os.environ.get("COMFYUI_FRONTEND_TIMEOUT", "120"))
# A returning user: no template browser on the first page load.
FRONTEND_SETTINGS = {"Comfy.TutorialCompleted": True}
VIEWPORT = {"width": 2560, "height": 1440}  # large enough that "fit view" keeps the full-detail rendering
DEFAULT_WINDOW = {"width": 1920, "height": 1000}  # the window test_workflows.py checks the saved view against

pytestmark = [
    pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the frontend tests"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium executable (set CHROMIUM_PATH)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="the playwright package is missing"),
]

# Loads a workflow with the frontend's own loader, converts it back with its own graphToPrompt and returns
# what the live graph holds. Every promise races a timeout so a hung frontend fails instead of blocking.
LOAD_AND_INSPECT = """
async ([workflow, timeoutMs]) => {
  const bounded = (promise, what) => Promise.race([promise, new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`${what} took longer than ${timeoutMs} ms`)), timeoutMs))]);
  await bounded(app.loadGraphData(workflow), 'app.loadGraphData');
  // Nodes with an upload widget grow once their file preview has loaded: wait until no size changes.
  const sizes = () => JSON.stringify(app.graph.nodes.map((node) => [...node.size]));
  for (let last = null, tries = 0; sizes() !== last && tries < 40; tries++) {
    last = sizes();
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const prompt = await bounded(app.graphToPrompt(), 'app.graphToPrompt');
  const canvas = app.canvas.canvas.getBoundingClientRect();
  const view = {canvas: [canvas.x, canvas.y, canvas.width, canvas.height], scale: app.canvas.ds.scale,
                offset: [...app.canvas.ds.offset], title: LiteGraph.NODE_TITLE_HEIGHT,
                groups: app.graph.groups.map((group) => ({title: group.title, bounding: [...group.boundingRect]}))};
  const nodes = app.graph.nodes.map((node) => ({
    id: node.id,
    type: node.type,
    box: [...node.pos, ...node.size],
    registered: node.type in LiteGraph.registered_node_types,
    inputs: (node.inputs ?? []).map((input) => ({name: input.name, link: input.link ?? null})),
    outputs: (node.outputs ?? []).map((output) => ({name: output.name, links: output.links ?? []})),
    widgets: (node.widgets ?? []).map((widget) => ({
      name: widget.name,
      value: widget.value ?? null,
      choices: widget.type === 'combo' && Array.isArray(widget.options?.values) ? widget.options.values : null,
    })),
  }));
  const links = [...app.graph.links.values()].map((link) => ({
    id: link.id, origin_id: link.origin_id, origin_slot: link.origin_slot,
    target_id: link.target_id, target_slot: link.target_slot,
  }));
  return {nodes, links, view, prompt: prompt.output};
}
"""
# Frames the whole graph and lets the canvas redraw before a screenshot.
FIT_VIEW = """
async () => {
  await app.extensionManager.command.execute('Comfy.Canvas.FitView');
  app.graph.setDirtyCanvas(true, true);
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
}
"""
OPEN_DIALOGS = "() => [...document.querySelectorAll('.p-dialog')].map((dialog) => dialog.innerText.trim())"


@dataclass
class Frontend:
    """An open frontend page and the uncaught errors it raised since it became ready."""

    page: Page
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ComfyUIServer]:
    """A running ComfyUI with this pack; stopped when the module's tests are done."""
    comfyui = Path(COMFYUI).resolve()
    assert (comfyui / "main.py").is_file(), f"COMFYUI_PATH={COMFYUI} has no main.py"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    with running_server(comfyui, python, tmp_path_factory.mktemp("comfyui"), REPO, MEDIA, STARTUP_TIMEOUT,
                        FRONTEND_SETTINGS) as comfy:
        yield comfy


@pytest.fixture(scope="module")
def declared_inputs(server) -> dict[str, set[str]]:
    """Node type -> names of its required and optional inputs, from ``/object_info``."""
    info = server.get_json("/object_info")
    return {node_type: set(node["input"].get("required", {})) | set(node["input"].get("optional", {}))
            for node_type, node in info.items()}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module, closed when its tests are done."""
    with chromium(CHROMIUM, PAGE_TIMEOUT) as running:
        yield running


@pytest.fixture
def frontend(browser, server) -> Iterator[Frontend]:
    """A fresh frontend page with its own storage, closed after the test."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        opened = Frontend(open_frontend(context, server.url, PAGE_TIMEOUT))
        opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
        yield opened
    finally:
        context.close()


def load_and_inspect(page: Page, workflow: dict) -> dict:
    """Load ``workflow`` in the page and return its live nodes, links and API prompt."""
    return page.evaluate(LOAD_AND_INSPECT, [workflow, PAGE_TIMEOUT * 1000])


def is_link(value) -> bool:
    """Whether an API input value is a link ``[source node id, output slot]``."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def missing_node_problems(workflow: dict, live: dict) -> list[str]:
    """(a) The file's nodes are all in the live graph with a registered type."""
    problems = [f"node {node['id']}: type {node['type']!r} is not registered in the frontend"
                for node in live["nodes"] if not node["registered"]]
    expected = {node["id"]: node["type"] for node in workflow["nodes"]}
    loaded = {node["id"]: node["type"] for node in live["nodes"]}
    if loaded != expected:
        problems.append(f"live graph nodes {loaded} differ from the file's {expected}")
    return problems


def note_problems(workflow: dict, live: dict) -> list[str]:
    """(e) Each Note of the file shows its text in the live graph."""
    live_nodes = {node["id"]: node for node in live["nodes"]}
    problems = []
    for note in (node for node in workflow["nodes"] if node["type"] == "Note"):
        shown = [widget["value"] for widget in live_nodes.get(note["id"], {}).get("widgets", [])
                 if widget["name"] == "text"]
        if shown != note["widgets_values"]:
            problems.append(f"note {note['id']} shows {shown!r}, the file has {note['widgets_values']!r}")
    return problems


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def inside(box, outer) -> bool:
    return (outer[0] <= box[0] and outer[1] <= box[1] and box[0] + box[2] <= outer[0] + outer[2]
            and box[1] + box[3] <= outer[1] + outer[3])


def layout_problems(live: dict) -> list[str]:
    """(f) At the view the file opens with, the live nodes (title bars included, as tall as the frontend made
    them) and groups lie on the canvas, below the menu bar; no two nodes overlap; each node is in one group."""
    view = live["view"]
    scale, (dx, dy) = view["scale"], view["offset"]
    canvas = (0, 0, view["canvas"][2], view["canvas"][3])
    nodes = [(f"node {node['id']} ({node['type']})", (node["box"][0], node["box"][1] - view["title"],
                                                     node["box"][2], node["box"][3] + view["title"]))
             for node in live["nodes"]]
    groups = [(f"group {group['title']}", tuple(group["bounding"])) for group in view["groups"]]
    problems = []
    for name, (x, y, width, height) in nodes + groups:
        on_screen = ((x + dx) * scale, (y + dy) * scale, width * scale, height * scale)
        if not inside(on_screen, canvas):
            problems.append(f"{name} at {tuple(round(v) for v in on_screen)} is not inside the canvas {canvas}")
    for index, (name, box) in enumerate(nodes):
        problems += [f"{name} overlaps {other}" for other, other_box in nodes[index + 1:] if overlap(box, other_box)]
        holders = [group for group, group_box in groups if inside(box, group_box)]
        if len(holders) != 1:
            problems.append(f"{name} is in {len(holders)} groups")
    return problems


def widget_problems(live: dict, twin: dict, declared: dict[str, set[str]]) -> list[str]:
    """(b) Each widget that is a node input holds the API twin's value for that input name."""
    problems = []
    for node in live["nodes"]:
        inputs = twin.get(str(node["id"]), {}).get("inputs", {})
        where = f"node {node['id']} ({node['type']})"
        names = set()
        for widget in node["widgets"]:
            name, value = widget["name"], widget["value"]
            if name not in declared.get(node["type"], set()):
                continue  # upload buttons, audio players, previews: frontend-only widgets
            names.add(name)
            if name not in inputs:
                problems.append(f"{where}: widget {name!r} = {value!r} has no input in the API twin")
            elif is_link(inputs[name]):
                continue
            elif value != inputs[name]:
                problems.append(f"{where}: widget {name!r} holds {value!r}, the API twin says {inputs[name]!r}")
            elif widget["choices"] is not None and value not in widget["choices"]:
                problems.append(f"{where}: combo {name!r} value {value!r} is not one of its choices")
        problems += [f"{where}: API input {name!r} = {value!r} has no widget in the frontend"
                     for name, value in inputs.items() if not is_link(value) and name not in names]
    return problems


def slot(nodes: dict[int, dict], node_id: int, kind: str, index: int) -> dict:
    """Input or output ``index`` (``kind`` is "inputs" or "outputs") of a node, or {} when there is none."""
    slots = nodes.get(node_id, {}).get(kind, [])
    return slots[index] if 0 <= index < len(slots) else {}


def link_problems(workflow: dict, live: dict) -> list[str]:
    """(c) Every link of the file joins the same node ids, slot indices and slot names in the live graph."""
    saved_nodes = {node["id"]: node for node in workflow["nodes"]}
    live_nodes = {node["id"]: node for node in live["nodes"]}
    live_links = {link["id"]: link for link in live["links"]}
    problems = []
    for link_id, origin, origin_slot, target, target_slot, _ in workflow["links"]:
        link = live_links.get(link_id)
        expected = (origin, origin_slot, target, target_slot)
        if link is None:
            problems.append(f"link {link_id} {expected} is not in the live graph")
            continue
        found = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"])
        if found != expected:
            problems.append(f"link {link_id}: live (origin, slot, target, slot) {found}, file {expected}")
            continue
        output = slot(live_nodes, origin, "outputs", origin_slot)
        target_input = slot(live_nodes, target, "inputs", target_slot)
        names = (output.get("name"), target_input.get("name"))
        saved = (slot(saved_nodes, origin, "outputs", origin_slot).get("name"),
                 slot(saved_nodes, target, "inputs", target_slot).get("name"))
        if names != saved:
            problems.append(f"link {link_id}: live slot names {names}, file {saved}")
        if link_id not in output.get("links", []) or target_input.get("link") != link_id:
            problems.append(f"link {link_id}: the live slots do not refer back to it")
    extra = sorted(set(live_links) - {link[0] for link in workflow["links"]})
    if extra:
        problems.append(f"the live graph has links the file lacks: {extra}")
    return problems


def prompt_problems(live: dict, twin: dict, declared: dict[str, set[str]]) -> list[str]:
    """(d) ``graphToPrompt`` gives the twin's nodes, class types and inputs (frontend-only extra keys ignored)."""
    prompt = live["prompt"]
    problems = []
    if set(prompt) != set(twin):
        problems.append(f"graphToPrompt node ids {sorted(prompt)} differ from the API twin's {sorted(twin)}")
    for node_id, expected in twin.items():
        entry = prompt.get(node_id)
        if entry is None:
            continue
        where = f"prompt node {node_id} ({expected['class_type']})"
        if entry["class_type"] != expected["class_type"]:
            problems.append(f"{where}: class_type {entry['class_type']!r}")
        for name, value in expected["inputs"].items():
            if name not in entry["inputs"]:
                problems.append(f"{where}: input {name!r} is missing")
            elif entry["inputs"][name] != value:
                problems.append(f"{where}: input {name!r} = {entry['inputs'][name]!r}, API twin {value!r}")
        extra = set(entry["inputs"]) - set(expected["inputs"])
        problems += [f"{where}: input {name!r} = {entry['inputs'][name]!r} is not in the API twin"
                     for name in sorted(extra & declared.get(entry["class_type"], set()))]
    return problems


@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_workflow_loads_in_frontend(frontend, declared_inputs, workflow_path, tmp_path):
    twin_path = REPO / "workflows" / "api" / workflow_path.name
    assert twin_path.is_file(), f"{workflow_path.name} has no API twin at {twin_path}"
    workflow = json.loads(workflow_path.read_text(encoding="utf-8"))
    twin = json.loads(twin_path.read_text(encoding="utf-8"))

    page = frontend.page
    page.set_viewport_size(DEFAULT_WINDOW)
    live = load_and_inspect(page, workflow)
    page.evaluate("() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))")
    page.screenshot(path=str(tmp_path / f"{workflow_path.stem}_default_view.png"))
    page.set_viewport_size(VIEWPORT)
    page.evaluate(FIT_VIEW)
    screenshot = tmp_path / f"{workflow_path.stem}.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")

    problems = missing_node_problems(workflow, live)
    problems += note_problems(workflow, live)
    problems += layout_problems(live)
    problems += [f"dialog after loading: {text[:300]!r}" for text in page.evaluate(OPEN_DIALOGS)]
    problems += [f"uncaught page error: {error}" for error in frontend.errors]
    problems += widget_problems(live, twin, declared_inputs)
    problems += link_problems(workflow, live)
    problems += prompt_problems(live, twin, declared_inputs)
    assert not problems, f"{workflow_path.name} in the frontend:\n" + "\n".join(problems)


def test_missing_node_type_is_detected(frontend):
    """The checks above see a node type the frontend does not know (and it shows its missing-nodes dialog)."""
    workflow = json.loads(WORKFLOWS[0].read_text(encoding="utf-8"))
    broken = copy.deepcopy(workflow)
    broken["nodes"][0]["type"] = "MuseTalkNoSuchNode"

    live = load_and_inspect(frontend.page, broken)
    frontend.page.wait_for_selector(".p-dialog")

    assert missing_node_problems(workflow, live)
    assert any("MuseTalkNoSuchNode" in text for text in frontend.page.evaluate(OPEN_DIALOGS))
