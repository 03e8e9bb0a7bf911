"""``musetalk_cli.queue_client`` against a small scripted stand-in for ComfyUI on 127.0.0.1.

The stand-in speaks the HTTP routes the client uses and, optionally, a minimal websocket
(handshake plus unmasked server frames), so both the websocket and the polling paths run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import threading
import urllib.parse
import uuid
from email.parser import BytesParser
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from musetalk_cli import queue_client
from musetalk_cli.queue_client import (
    ComfyClient,
    ExecutionFailed,
    Override,
    PromptRejected,
    Upload,
    apply_overrides,
    load_workflow,
    output_files,
    parse_override,
    parse_upload,
)

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OUTPUTS = {
    "9": {"images": [{"filename": "lipsync_00001_.mp4", "subfolder": "video", "type": "output"}], "animated": [True]},
    "10": {"text": ["45 frames"]},
    "11": {"images": [{"filename": "lipsync_00001_.mp4", "subfolder": "video", "type": "output"},
                      {"filename": "preview.png", "subfolder": "", "type": "temp"}]},
}

WORKFLOW = {
    "1": {"class_type": "LoadVideo", "inputs": {"file": "placeholder.mp4"}, "_meta": {"title": "Face video"}},
    "2": {"class_type": "MuseTalkLipSync", "inputs": {"video": ["1", 0], "face_backend": "face-alignment",
                                                       "bbox_shift": 0}, "_meta": {"title": "Lip sync v1.5"}},
    "3": {"class_type": "MuseTalkLipSync", "inputs": {"video": ["1", 0], "face_backend": "face-alignment"}},
    "9": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/lipsync"}},
}


def _frame(payload: bytes, opcode: int) -> bytes:
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
    return header + payload


class FakeComfy(ThreadingHTTPServer):
    """Records uploads and prompts; a prompt containing a ``Fail`` node fails, one with ``Invalid`` is refused."""

    daemon_threads = True

    def __init__(self, websocket: bool, history_after: int = 1):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.websocket = websocket
        self.history_after = history_after
        self.uploads: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.prompts: list[dict] = []
        self.history_polls = 0
        self.views: list[dict[str, str]] = []
        self.submitted = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def failing(self) -> bool:
        return any(node["class_type"] == "Fail" for node in self.prompts[-1]["prompt"].values())

    def events(self, prompt_id: str) -> list[dict]:
        def event(kind: str, **data) -> dict:
            return {"type": kind, "data": {**data, "prompt_id": prompt_id}}

        if self.failing():
            return [event("execution_start"), event("executing", node="2"),
                    event("execution_error", node_id="2", node_type="Fail", exception_type="ValueError",
                          exception_message="no face in frame 3", traceback=["..."], executed=[])]
        return [event("execution_start"), event("execution_cached", nodes=["1"]), event("executing", node="2"),
                event("progress", node="2", value=1, max=2), event("progress", node="2", value=2, max=2),
                event("executing", node="9"), event("executed", node="9", output=OUTPUTS["9"]),
                event("execution_success")]

    def history_entry(self, prompt_id: str) -> dict:
        if self.failing():
            error = {"prompt_id": prompt_id, "node_id": "2", "node_type": "Fail", "exception_type": "ValueError",
                     "exception_message": "no face in frame 3", "traceback": []}
            status = {"status_str": "error", "completed": False,
                      "messages": [["execution_start", {"prompt_id": prompt_id}], ["execution_error", error]]}
            return {"outputs": {}, "status": status}
        return {"outputs": OUTPUTS, "status": {"status_str": "success", "completed": True, "messages": []}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeComfy

    def log_message(self, *args) -> None:
        pass

    def _reply(self, body: bytes, status: int = 200, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        self._reply(json.dumps(data).encode(), status)

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/ws" and self.server.websocket:
            self._websocket()
        elif url.path.startswith("/history/"):
            self.server.history_polls += 1
            prompt_id = url.path.rsplit("/", 1)[1]
            ready = self.server.history_polls > self.server.history_after
            self._json({prompt_id: self.server.history_entry(prompt_id)} if ready else {})
        elif url.path == "/view":
            self.server.views.append(query)
            self._reply(f"{query['type']}:{query['subfolder']}:{query['filename']}".encode(), content_type="video/mp4")
        else:
            self._reply(b"not found", 404, "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/upload/image":
            message = BytesParser(policy=default_policy).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
            fields, file_name, content = {}, None, b""
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if part.get_filename():
                    assert name == "image"
                    file_name, content = part.get_filename(), part.get_payload(decode=True)
                else:
                    fields[name] = part.get_content()
            self.server.uploads[file_name] = (content, fields)
            self._json({"name": file_name, "subfolder": fields.get("subfolder", ""), "type": "input"})
        elif self.path == "/prompt":
            request = json.loads(body)
            self.server.prompts.append(request)
            if any(node["class_type"] == "Invalid" for node in request["prompt"].values()):
                self._json({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed "
                                      "validation", "details": ""},
                            "node_errors": {"2": {"class_type": "Invalid", "dependent_outputs": ["9"], "errors": [
                                {"type": "value_bigger_than_max", "message": "Value 500 bigger than max of 100",
                                 "details": "bbox_shift"}]}}}, 400)
                return
            prompt_id = uuid.uuid4().hex
            self.server.prompts[-1]["prompt_id"] = prompt_id
            self.server.submitted.set()
            self._json({"prompt_id": prompt_id, "number": len(self.server.prompts), "node_errors": {}})
        else:
            self._reply(b"not found", 404, "text/plain")

    def _websocket(self) -> None:
        client_id = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["clientId"][0]
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WEBSOCKET_GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.close_connection = True
        status = {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}
        self.wfile.write(_frame(json.dumps(status).encode(), 1))
        if not self.server.submitted.wait(5):
            return
        assert self.server.prompts[-1]["client_id"] == client_id
        self.wfile.write(_frame(b"\x00\x00\x00\x01binary preview", 2))
        for event in self.server.events(self.server.prompts[-1]["prompt_id"]):
            self.wfile.write(_frame(json.dumps(event).encode(), 1))
        self.wfile.flush()


@pytest.fixture(params=[True, False], ids=["websocket", "polling"])
def fake(request):
    if request.param:
        pytest.importorskip("websocket")
    server = FakeComfy(websocket=request.param)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _client(server: FakeComfy, lines: list[str] | None = None) -> ComfyClient:
    return ComfyClient(server.url, request_timeout=5, poll_interval=0.02,
                       progress=lines.append if lines is not None else None)


# -- parsing and overrides ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("2.bbox_shift=5", Override("2", "bbox_shift", 5)),
    ("2.scale=0.5", Override("2", "scale", 0.5)),
    ("2.enabled=true", Override("2", "enabled", True)),
    ("2.video=[\"1\", 0]", Override("2", "video", ["1", 0])),
    ("2.face_backend=dlib", Override("2", "face_backend", "dlib")),
    ("2.text=a=b", Override("2", "text", "a=b")),
    ('2.text="42"', Override("2", "text", "42")),
    ("2.text=", Override("2", "text", "")),
    ("Lip sync v1.5.bbox_shift=-3", Override("Lip sync v1.5", "bbox_shift", -3)),
    ("*.face_backend=dlib", Override("*", "face_backend", "dlib")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["2.bbox_shift", "bbox_shift=3", ".bbox_shift=3", "2.=3"])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ValueError, match="NODE.INPUT"):
        parse_override(text)


def test_parse_upload(tmp_path):
    odd = tmp_path / "a=b.wav"
    odd.write_bytes(b"x")
    assert parse_upload("speech.wav") == Upload(Path("speech.wav"))
    assert parse_upload("Face video.file=clips/talk.mp4") == Upload(Path("clips/talk.mp4"), ("Face video", "file"))
    assert parse_upload(str(odd)) == Upload(odd)


def test_apply_overrides_resolves_ids_titles_class_types_and_wildcards():
    result = apply_overrides(WORKFLOW, [
        Override("9", "filename_prefix", "video/dub"),
        Override("Lip sync v1.5", "bbox_shift", 7),
        Override("LoadVideo", "file", "talk.mp4"),
        Override("*", "face_backend", "dlib"),
        Override("3", "batch_size", 4),
    ])
    assert result["9"]["inputs"]["filename_prefix"] == "video/dub"
    assert result["2"]["inputs"]["bbox_shift"] == 7
    assert result["1"]["inputs"]["file"] == "talk.mp4"
    assert result["2"]["inputs"]["face_backend"] == result["3"]["inputs"]["face_backend"] == "dlib"
    assert result["3"]["inputs"]["batch_size"] == 4
    assert "face_backend" not in result["9"]["inputs"]
    assert WORKFLOW["2"]["inputs"]["face_backend"] == "face-alignment"  # the original is untouched


@pytest.mark.parametrize(("override", "message"), [
    (Override("MuseTalkLipSync", "bbox_shift", 1), "several nodes"),
    (Override("Nope", "x", 1), "no node 'Nope'"),
    (Override("*", "missing_input", 1), "no node of the workflow has an input named 'missing_input'"),
])
def test_apply_overrides_errors(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(WORKFLOW, [override])


def test_load_workflow(tmp_path):
    api = tmp_path / "api.json"
    api.write_text(json.dumps(WORKFLOW))
    assert load_workflow(api) == WORKFLOW
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(ValueError, match="UI-format"):
        load_workflow(ui)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(ValueError, match="not an API-format"):
        load_workflow(other)


def test_output_files_lists_each_file_once():
    assert output_files(OUTPUTS) == [
        {"filename": "lipsync_00001_.mp4", "subfolder": "video", "type": "output"},
        {"filename": "preview.png", "subfolder": "", "type": "temp"},
    ]


# -- against the stand-in server ------------------------------------------------------------------


def test_run_uploads_overrides_follows_and_downloads(fake, tmp_path):
    clip = tmp_path / "talk.mp4"
    clip.write_bytes(b"fake video bytes")
    lines: list[str] = []
    paths = _client(fake, lines).run(WORKFLOW, ["*.face_backend=dlib", "9.filename_prefix=video/dub"],
                                     [f"Face video.file={clip}"], tmp_path / "out", timeout=10)

    assert fake.uploads == {"talk.mp4": (b"fake video bytes", {"type": "input", "subfolder": "", "overwrite": "true"})}
    sent = fake.prompts[-1]["prompt"]
    assert sent["1"]["inputs"]["file"] == "talk.mp4"
    assert sent["2"]["inputs"]["face_backend"] == sent["3"]["inputs"]["face_backend"] == "dlib"
    assert sent["9"]["inputs"]["filename_prefix"] == "video/dub"
    assert paths == [tmp_path / "out" / "video" / "lipsync_00001_.mp4", tmp_path / "out" / "preview.png"]
    assert paths[0].read_bytes() == b"output:video:lipsync_00001_.mp4"
    assert paths[1].read_bytes() == b"temp::preview.png"
    if fake.websocket:
        assert "cached: [1] LoadVideo" in lines
        assert "[2] MuseTalkLipSync: running" in lines
        assert "[2] MuseTalkLipSync: 1/2" in lines and "[2] MuseTalkLipSync: 2/2" in lines
        assert "[9] SaveVideo: done" in lines
    else:
        assert any("polling /history" in line for line in lines)


def test_runs_without_websocket_client(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "websocket", None)  # makes `import websocket` raise ImportError
    lines: list[str] = []
    paths = _client(fake, lines).run(WORKFLOW, output_dir=tmp_path, timeout=10)
    assert len(paths) == 2 and "websocket-client is not installed; polling /history instead" in lines


def test_execution_error_names_the_node(fake):
    failing = {**WORKFLOW, "2": {"class_type": "Fail", "inputs": {}}}
    with pytest.raises(ExecutionFailed, match=r"node 2 \(Fail\) failed: ValueError: no face in frame 3") as caught:
        _client(fake).run(failing, timeout=10)
    assert (caught.value.node_id, caught.value.node_type) == ("2", "Fail")


def test_rejected_prompt_lists_node_errors(fake):
    invalid = {**WORKFLOW, "2": {"class_type": "Invalid", "inputs": {}}}
    with pytest.raises(PromptRejected, match=r"node 2 \(Invalid\): Value 500 bigger than max of 100 bbox_shift"):
        _client(fake).submit(invalid)


def test_wait_times_out(fake):
    fake.history_after = 10**6
    with pytest.raises(TimeoutError, match="did not finish within 0.2 s"):
        _client(fake).wait("never", timeout=0.2)


def test_upload_missing_file(fake, tmp_path):
    with pytest.raises(FileNotFoundError):
        _client(fake).upload(tmp_path / "missing.wav")


def test_cli_run(fake, tmp_path, capsys):
    workflow = tmp_path / "workflow_api.json"
    workflow.write_text(json.dumps(WORKFLOW))
    parser = argparse.ArgumentParser()
    queue_client.add_arguments(parser)
    args = parser.parse_args([str(workflow), "--server", fake.url.removeprefix("http://"),
                              "--set", "Lip sync v1.5.bbox_shift=3", "--output-dir", str(tmp_path / "out"),
                              "--timeout", "10"])
    paths = queue_client.run(args)
    assert fake.prompts[-1]["prompt"]["2"]["inputs"]["bbox_shift"] == 3
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [str(path) for path in paths]
    assert "queued prompt" in printed.err
    assert all(path.is_file() for path in paths)
