"""The node pack inside a real ComfyUI server: it loads, and every API workflow in workflows/api runs.

Skipped unless ``COMFYUI_PATH`` points at a ComfyUI checkout. ``COMFYUI_PYTHON`` is the Python that
runs it (default: this one). The server gets tiny RANDOM weights, the pack through a
``custom_nodes`` symlink, and the shared media as its input folder. Example:

    COMFYUI_PATH=/work/comfyui COMFYUI_PYTHON=/work/comfyui-venv/bin/python \
        .venv/bin/python -m pytest -q tests/test_comfyui_server.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from comfyui_support import PACK_LINK_NAME, declared_node_ids, probe_video, running_server
from media_dir import MEDIA

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
COMFYUI = os.environ.get("COMFYUI_PATH")
STARTUP_TIMEOUT = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "300"))
PROMPT_TIMEOUT = float(os.environ.get("COMFYUI_PROMPT_TIMEOUT", "900"))

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server tests")


@pytest.fixture(scope="module")
def python() -> str:
    return os.environ.get("COMFYUI_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def server(tmp_path_factory, python):
    """A running ComfyUI with this pack; stopped when the module's tests are done."""
    comfyui = Path(COMFYUI).resolve()
    assert (comfyui / "main.py").is_file(), f"COMFYUI_PATH={COMFYUI} has no main.py"
    with running_server(comfyui, python, tmp_path_factory.mktemp("comfyui"), REPO, MEDIA, STARTUP_TIMEOUT) as comfy:
        yield comfy


def test_pack_imports_cleanly(server):
    log = server.log()
    failures = [line for line in log.splitlines()
                if PACK_LINK_NAME in line and ("IMPORT FAILED" in line or "Cannot import" in line)]
    assert not failures, "\n".join(failures) + "\n" + server.log_tail()


def test_every_declared_node_is_registered(server, python):
    declared = declared_node_ids(python, server.comfyui, server.sandbox.custom_nodes / PACK_LINK_NAME)
    assert declared, "the pack declares no nodes"
    info = server.get_json("/object_info")
    missing = [node_id for node_id in declared if node_id not in info]
    assert not missing, f"nodes not registered (id taken by core or another pack?): {missing}"
    ours = {node_id for node_id, node in info.items() if PACK_LINK_NAME in node.get("python_module", "")}
    assert ours == set(declared)


@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_workflow_runs(server, workflow_path, tmp_path):
    from musetalk_cli.queue_client import ComfyClient, load_workflow, output_files

    workflow = load_workflow(workflow_path)  # as shipped: face backend auto, offline (dlib here), random weights
    lines: list[str] = []
    try:
        downloaded = ComfyClient(server.url, progress=lines.append).run(workflow, [], output_dir=tmp_path,
                                                                        timeout=PROMPT_TIMEOUT)
    except Exception as error:
        raise AssertionError(f"{workflow_path.name} failed: {error}\n{server.log_tail()}") from error
    finally:
        print("\n".join(lines))
    assert not [line for line in lines if line.startswith("warning:")], "some nodes were refused"

    (entry,) = server.get_json("/history?max_items=1").values()
    assert entry["status"]["status_str"] == "success"
    texts = [text for output in entry["outputs"].values() for text in output.get("text", [])]
    assert any("RANDOM" in text for text in texts), f"random weights not reported in /history: {texts}"
    assert any("Face backend auto: dlib" in text for text in texts), texts
    reported = output_files(entry["outputs"])
    assert reported, f"{workflow_path.name} reported no output files"
    folders = {"output": server.sandbox.output, "temp": server.sandbox.temp, "input": server.sandbox.input}
    for item in reported:
        on_server = folders[item["type"]] / item["subfolder"] / item["filename"]
        assert on_server.is_file(), f"reported output {on_server} does not exist"
        local = tmp_path / item["subfolder"] / item["filename"]
        assert local in downloaded and local.read_bytes() == on_server.read_bytes()
        if on_server.suffix.lower() == ".mp4":
            frames, has_audio = probe_video(on_server)
            assert frames > 0, f"{on_server.name} has no video frames"
            assert has_audio, f"{on_server.name} has no audio stream"


def test_requeueing_identical_inputs_hits_the_cache(server):
    from musetalk_cli.queue_client import ComfyClient, load_workflow

    workflow = load_workflow(REPO / "workflows" / "api" / "musetalk_dub_still_image.json")
    client = ComfyClient(server.url)
    for _ in range(2):
        entry = client.wait(client.submit(workflow), PROMPT_TIMEOUT)
    cached = [set(data["nodes"]) for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
    assert cached == [set(workflow)], f"second run executed nodes again: {entry['status']['messages']}"


# (workflow, node class, input, value): file names reaching outside ComfyUI's folders, and a missing video.
# "{media}" is the shared media folder (absolute), "{up}{outside}" a real video next to the input folder reached
# with ".." up to the root.
REFUSED_NAMES = [
    ("musetalk_dub_video_blocks", "MuseTalkLoadAvatar", "file", "../outside.mp4"),
    ("musetalk_dub_video_blocks", "MuseTalkLoadAvatar", "file", "{media}/talking_closeup.mp4"),
    ("musetalk_dub_video_blocks", "MuseTalkLoadAvatar", "file", "missing.mp4"),
    ("musetalk_dub_video_blocks", "MuseTalkLoadAvatar", "landmarks_file", "/etc/passwd"),
    ("musetalk_dub_video_one_node", "MuseTalkDub", "file", "{up}{outside}"),
    ("musetalk_dub_video_one_node", "MuseTalkDub", "landmarks_file", "../landmarks/talking_closeup.json"),
    ("musetalk_dub_video_one_node", "MuseTalkVideoCombine", "filename_prefix", "../escaped/dub"),
]


def post_prompt(url: str, workflow: dict) -> dict:
    """The server's answer to ``POST /prompt`` (a refusal comes with HTTP 400)."""
    request = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": workflow}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


@pytest.mark.parametrize("workflow_name, class_type, input_name, value", REFUSED_NAMES,
                         ids=[f"{case[1]}.{case[2]}={case[3]}" for case in REFUSED_NAMES])
def test_names_outside_comfyui_folders_are_refused_on_that_input(server, workflow_name, class_type, input_name,
                                                                  value):
    from musetalk_cli.queue_client import Override, apply_overrides, load_workflow

    outside = server.sandbox.root / "outside.mp4"
    shutil.copyfile(MEDIA / "talking_closeup.mp4", outside)
    value = value.format(media=MEDIA.resolve(), up="../" * (len(server.sandbox.input.resolve().parts) - 1),
                         outside=outside.resolve().relative_to("/"))
    workflow = apply_overrides(load_workflow(REPO / "workflows" / "api" / f"{workflow_name}.json"),
                               [Override(class_type, input_name, value)])
    (node_id,) = [key for key, node in workflow.items() if node["class_type"] == class_type]

    answer = post_prompt(server.url, workflow)
    assert "prompt_id" not in answer, f"queued: {answer}"
    assert list(answer["node_errors"]) == [node_id], answer
    errors = answer["node_errors"][node_id]["errors"]
    assert {error["extra_info"]["input_name"] for error in errors} == {input_name}, errors
    display = server.get_json(f"/object_info/{class_type}")[class_type]["display_name"]
    for error in errors:
        if error["type"] == "custom_validation_failed":  # our validate_inputs; a list input gets value_not_in_list
            assert error["details"].startswith(f"{input_name} - {display}: {input_name} '{value}' is "), error
        else:
            assert error["type"] == "value_not_in_list", error
    assert not list(server.sandbox.root.glob("escaped*"))


def test_a_clip_without_a_face_is_reported_in_history(server):
    """Load Avatar stops with the library's no-face message, shown as the node's error and kept in /history."""
    from musetalk_cli.queue_client import ComfyClient, Override, apply_overrides, load_workflow

    workflow = apply_overrides(load_workflow(REPO / "workflows" / "api" / "musetalk_dub_video_blocks.json"),
                               [Override("MuseTalkLoadAvatar", "file", "no_face.mp4")])
    client = ComfyClient(server.url)
    prompt_id = client.submit(workflow)
    deadline = time.monotonic() + PROMPT_TIMEOUT
    while (entry := client.history(prompt_id)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert entry is not None and entry["status"]["status_str"] == "error", entry
    (error,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert error["node_type"] == "MuseTalkLoadAvatar"
    assert error["exception_message"].startswith("MuseTalk Load Avatar: No face found in any of the 27 frame(s)")
    assert error["exception_type"] == "ValueError", "no module path in the error type"
