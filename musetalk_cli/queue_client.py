"""``musetalk queue``: run an API-format workflow on a ComfyUI server and download what it saved.

Files are uploaded into the server's input folder (``POST /upload/image``), inputs are overridden
with ``NODE.INPUT=VALUE``, the prompt is queued (``POST /prompt``) and followed over the websocket
(``/ws``; polling ``/history`` when the websocket cannot be used), then every file the history
lists under ``outputs`` is fetched through ``/view``.

Only the standard library is needed, plus ``websocket-client`` for live progress.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ComfyClient",
    "ComfyError",
    "ExecutionFailed",
    "Override",
    "PromptRejected",
    "Upload",
    "add_arguments",
    "apply_overrides",
    "load_workflow",
    "output_files",
    "parse_override",
    "parse_upload",
    "run",
]

DEFAULT_SERVER = "http://127.0.0.1:8188"
ALL_NODES = "*"
PROGRESS_INTERVAL = 1.0  # seconds between two progress lines of one node (the last one always shows)
Workflow = dict[str, dict[str, Any]]


class ComfyError(RuntimeError):
    """The server refused a request, or a queued prompt did not finish successfully."""


class PromptRejected(ComfyError):
    """``POST /prompt`` answered with a validation error."""

    def __init__(self, error: Mapping[str, Any], node_errors: Mapping[str, Any]):
        self.error, self.node_errors = dict(error), dict(node_errors)
        lines = [f"prompt rejected: {error.get('message', 'unknown error')} {error.get('details', '')}".rstrip()]
        for node_id, info in node_errors.items():
            for item in info.get("errors", []):
                lines.append(f"  node {node_id} ({info.get('class_type', '?')}): "
                             f"{item.get('message', '')} {item.get('details', '')}".rstrip())
        super().__init__("\n".join(lines))


class ExecutionFailed(ComfyError):
    """A node raised while the prompt ran (the websocket's or history's ``execution_error``)."""

    def __init__(self, data: Mapping[str, Any]):
        self.node_id = str(data.get("node_id"))
        self.node_type = str(data.get("node_type"))
        self.exception_type = str(data.get("exception_type", ""))
        self.message = str(data.get("exception_message", "")).strip()
        self.traceback = "".join(data.get("traceback") or [])
        super().__init__(f"node {self.node_id} ({self.node_type}) failed: {self.exception_type}: {self.message}")


@dataclass(frozen=True)
class Override:
    """Set input ``input`` of ``node`` (a node id, a unique ``_meta.title`` or class_type, or ``*``) to ``value``."""

    node: str
    input: str
    value: Any


@dataclass(frozen=True)
class Upload:
    """A local file to upload; with ``target`` (an Override without value), that input is set to its server name."""

    path: Path
    target: tuple[str, str] | None = None


def _split_target(key: str, text: str) -> tuple[str, str]:
    node, dot, name = key.rpartition(".")
    if not dot or not node or not name:
        raise ValueError(f"expected NODE.INPUT=..., got {text!r}")
    return node, name


def parse_override(text: str) -> Override:
    """Parse ``NODE.INPUT=VALUE``; VALUE is JSON if it parses (``3``, ``true``, ``["4", 0]``), else a string."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ValueError(f"expected NODE.INPUT=VALUE, got {text!r}")
    node, name = _split_target(key, text)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return Override(node, name, value)


def parse_upload(text: str) -> Upload:
    """Parse ``FILE`` or ``NODE.INPUT=FILE`` (an existing file whose name contains ``=`` is taken as ``FILE``)."""
    key, sep, path = text.partition("=")
    if not sep or Path(text).is_file():
        return Upload(Path(text))
    return Upload(Path(path), _split_target(key, text))


def load_workflow(path: str | os.PathLike) -> Workflow:
    """Read an API-format workflow (``{node_id: {"class_type", "inputs"}}``), refusing the UI format."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise ValueError(f"{path} is a UI-format workflow; save it with 'Export (API)' in ComfyUI")
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise ValueError(f"{path} is not an API-format workflow ({{node_id: {{class_type, inputs}}}})")
    return data


def _resolve_nodes(workflow: Workflow, ref: str, input_name: str) -> list[str]:
    if ref == ALL_NODES:
        found = [node_id for node_id, node in workflow.items() if input_name in node.get("inputs", {})]
        if not found:
            raise ValueError(f"no node of the workflow has an input named {input_name!r}")
        return found
    if ref in workflow:
        return [ref]
    for label, key in (("title", lambda node: node.get("_meta", {}).get("title")),
                       ("class_type", lambda node: node.get("class_type"))):
        found = [node_id for node_id, node in workflow.items() if key(node) == ref]
        if len(found) > 1:
            raise ValueError(f"{ref!r} is the {label} of several nodes ({', '.join(found)}); use a node id")
        if found:
            return found
    raise ValueError(f"no node {ref!r} (not a node id, title or class_type) in the workflow")


def apply_overrides(workflow: Workflow, overrides: Iterable[Override]) -> Workflow:
    """A copy of ``workflow`` with the overrides applied, in order. ``*`` means every node having that input."""
    result = copy.deepcopy(workflow)
    for override in overrides:
        for node_id in _resolve_nodes(result, override.node, override.input):
            result[node_id].setdefault("inputs", {})[override.input] = override.value
    return result


def output_files(outputs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """The file entries (``filename``, ``subfolder``, ``type``) of a history ``outputs`` dict, without duplicates."""
    files: list[dict[str, str]] = []
    for node_output in outputs.values():
        for items in node_output.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and item.get("filename"):
                    entry = {"filename": str(item["filename"]), "subfolder": str(item.get("subfolder") or ""),
                             "type": str(item.get("type") or "output")}
                    if entry not in files:
                        files.append(entry)
    return files


def _normalise_server(server: str) -> str:
    server = server.rstrip("/")
    return server if "://" in server else f"http://{server}"


def _multipart(fields: Mapping[str, str], file_field: str, path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{path.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ComfyClient:
    """A client for one ComfyUI server: ``ComfyClient("http://127.0.0.1:8188").run(workflow) -> [Path, ...]``.

    ``progress`` receives one human-readable line per event (node started, progress, cached, done).
    """

    def __init__(self, server: str = DEFAULT_SERVER, *, request_timeout: float = 60.0,
                 poll_interval: float = 0.5, progress: Callable[[str], None] | None = None):
        self.server = _normalise_server(server)
        self.client_id = uuid.uuid4().hex
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self._progress = progress or (lambda line: None)

    # -- HTTP -------------------------------------------------------------------------------------

    def _open(self, path: str, data: bytes | None = None, content_type: str | None = None) -> Any:
        request = urllib.request.Request(self.server + path, data=data)
        if content_type:
            request.add_header("Content-Type", content_type)
        return urllib.request.urlopen(request, timeout=self.request_timeout)

    def _request(self, path: str, data: bytes | None = None, content_type: str | None = None) -> bytes:
        with self._open(path, data, content_type) as response:
            return response.read()

    def _get_json(self, path: str) -> Any:
        return json.loads(self._request(path))

    def upload(self, path: str | os.PathLike, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload a file into the server's input folder; returns the name to give a loader node's input."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file to upload: {path}")
        fields = {"type": "input", "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        body, content_type = _multipart(fields, "image", path)
        stored = json.loads(self._request("/upload/image", body, content_type))
        return f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]

    def submit(self, workflow: Workflow) -> str:
        """Queue ``workflow``; returns the prompt id. Raises PromptRejected when the server refuses it."""
        body = json.dumps({"prompt": workflow, "client_id": self.client_id}).encode()
        try:
            answer = json.loads(self._request("/prompt", body, "application/json"))
        except urllib.error.HTTPError as error:
            try:
                refusal = json.loads(error.read())
            except ValueError:
                raise ComfyError(f"POST /prompt failed: HTTP {error.code} {error.reason}") from None
            raise PromptRejected(refusal.get("error") or {}, refusal.get("node_errors") or {}) from None
        for node_id, info in (answer.get("node_errors") or {}).items():
            self._progress(f"warning: node {node_id} ({info.get('class_type', '?')}) is invalid; "
                           "the outputs that depend on it will not run")
        return str(answer["prompt_id"])

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt, or None while it is queued or running."""
        return self._get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float) -> dict[str, Any]:
        """Poll ``/history`` until the prompt finished; returns its entry. Raises ExecutionFailed if it failed."""
        deadline = time.monotonic() + timeout
        while (entry := self.history(prompt_id)) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:g} s")
            time.sleep(self.poll_interval)
        _raise_for_status(entry)
        return entry

    def download(self, outputs: Mapping[str, Mapping[str, Any]], output_dir: str | os.PathLike) -> list[Path]:
        """Fetch every file listed in a history ``outputs`` dict into ``output_dir/<subfolder>/``."""
        paths = []
        for entry in output_files(outputs):
            subfolder = [part for part in Path(entry["subfolder"]).parts if part not in ("..", "/", "\\")]
            target = Path(output_dir).joinpath(*subfolder, Path(entry["filename"]).name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._open("/view?" + urllib.parse.urlencode(entry)) as response, open(target, "wb") as file:
                shutil.copyfileobj(response, file)
            paths.append(target)
        return paths

    # -- websocket --------------------------------------------------------------------------------

    def _connect_websocket(self) -> Any | None:
        try:
            import websocket
        except ImportError:
            self._progress("websocket-client is not installed; polling /history instead")
            return None
        url = "ws" + self.server[len("http"):] + f"/ws?clientId={self.client_id}"
        try:
            return websocket.create_connection(url, timeout=self.request_timeout)
        except (OSError, websocket.WebSocketException) as error:
            self._progress(f"no websocket ({error}); polling /history instead")
            return None

    def _follow(self, connection: Any, prompt_id: str, workflow: Workflow, deadline: float) -> None:
        """Print progress from websocket events until the prompt ends; raise on its execution error."""
        import websocket

        def describe(node_id: Any) -> str:
            return f"[{node_id}] {workflow.get(str(node_id), {}).get('class_type', '?')}"

        last_shown: dict[Any, float] = {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            connection.settimeout(remaining)
            try:
                message = connection.recv()
            except websocket.WebSocketTimeoutException:
                return
            except (OSError, websocket.WebSocketException):
                self._progress("websocket closed; polling /history instead")
                return
            if not isinstance(message, str):
                continue  # binary frames carry preview images
            event = json.loads(message)
            kind, data = event.get("type"), event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue  # another prompt's event, or one not tied to a prompt (status, reconnect)
            if kind == "execution_cached" and data.get("nodes"):
                self._progress("cached: " + ", ".join(describe(node) for node in data["nodes"]))
            elif kind == "executing" and data.get("node") is not None:
                self._progress(f"{describe(data['node'])}: running")
            elif kind == "progress":
                node, now = data.get("node"), time.monotonic()
                finished = data.get("value") == data.get("max")
                if finished or now - last_shown.get(node, float("-inf")) >= PROGRESS_INTERVAL:
                    last_shown[node] = now
                    self._progress(f"{describe(node)}: {data.get('value')}/{data.get('max')}")
            elif kind == "executed":
                self._progress(f"{describe(data.get('node'))}: done")
            elif kind == "execution_error":
                raise ExecutionFailed(data)
            elif kind == "execution_interrupted":
                raise ComfyError(f"prompt {prompt_id} was interrupted at {describe(data.get('node_id'))}")
            elif kind == "execution_success" or kind == "executing":
                return

    # -- all together -----------------------------------------------------------------------------

    def run(self, workflow: Workflow, overrides: Iterable[Override | str] = (),
            uploads: Iterable[Upload | str | os.PathLike] = (), output_dir: str | os.PathLike = ".",
            timeout: float = 3600.0) -> list[Path]:
        """Upload, override, queue, wait (at most ``timeout`` s) and download; returns the downloaded files."""
        changes = [item if isinstance(item, Override) else parse_override(item) for item in overrides]
        for item in uploads:
            upload = item if isinstance(item, Upload) else parse_upload(str(item))
            name = self.upload(upload.path)
            self._progress(f"uploaded {upload.path} as {name}")
            if upload.target:
                changes.insert(0, Override(*upload.target, name))
        workflow = apply_overrides(workflow, changes)

        deadline = time.monotonic() + timeout
        connection = self._connect_websocket()
        try:
            prompt_id = self.submit(workflow)
            self._progress(f"queued prompt {prompt_id} ({len(workflow)} nodes)")
            if connection is not None:
                self._follow(connection, prompt_id, workflow, deadline)
        finally:
            if connection is not None:
                connection.close()
        entry = self.wait(prompt_id, max(deadline - time.monotonic(), self.poll_interval))
        return self.download(entry.get("outputs", {}), output_dir)


def _raise_for_status(entry: Mapping[str, Any]) -> None:
    status = entry.get("status") or {}
    if status.get("status_str", "success") == "success":
        return
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            raise ExecutionFailed(data)
        if kind == "execution_interrupted":
            raise ComfyError(f"prompt was interrupted at node {data.get('node_id')} ({data.get('node_type')})")
    raise ComfyError(f"prompt finished with status {status.get('status_str')!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``musetalk queue`` options."""
    parser.description = ("Run an API-format ComfyUI workflow on a server: upload inputs, override node inputs, "
                          "follow its progress and download every file it saved.")
    parser.add_argument("workflow", type=Path, metavar="WORKFLOW_API.json",
                        help="workflow saved with 'Export (API)' in ComfyUI")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="ComfyUI address (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="override an input; NODE is a node id, a unique title or class_type, or * for every "
                             "node with that input; VALUE is parsed as JSON when possible (repeatable)")
    parser.add_argument("--upload", dest="uploads", action="append", default=[], metavar="[NODE.INPUT=]FILE",
                        help="upload FILE into the server's input folder, and optionally set NODE.INPUT to its "
                             "name there (repeatable)")
    parser.add_argument("--output-dir", type=Path, default=Path("."),
                        help="where the output files go, in their server subfolders (default: current folder)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for the prompt (default: %(default)s)")


def run(args: argparse.Namespace) -> list[Path]:
    """Run ``musetalk queue``: progress goes to stderr, the downloaded paths to stdout; returns those paths."""
    client = ComfyClient(args.server, progress=lambda line: print(line, file=sys.stderr, flush=True))
    paths = client.run(load_workflow(args.workflow), args.overrides, args.uploads, args.output_dir, args.timeout)
    for path in paths:
        print(path)
    return paths
