"""Run a real ComfyUI server on 127.0.0.1 with this pack loaded from a throwaway folder, and open its frontend.

Used by ``test_comfyui_server.py`` and ``test_comfyui_frontend.py``. Nothing here needs ComfyUI importable in
the test process: the server runs as a subprocess with its own Python. The browser helpers take Playwright
objects but do not import Playwright.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

PACK_LINK_NAME = "musetalk-lipsync"

# Chromium flags for a headless run on a box without GPU or network. Playwright adds --headless and a fresh
# temporary --user-data-dir itself.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
# True in the page once the frontend has built its app and an empty graph.
FRONTEND_READY = "() => Boolean(window.app && window.app.graph && window.LiteGraph)"

# Imports a pack's root __init__.py the way ComfyUI's nodes.load_custom_node does (a package spec
# from the file path, registered under the path-derived name) and prints the node ids of its V3 entry point.
_DECLARED_IDS_SCRIPT = r"""
import asyncio, importlib.util, inspect, json, os, sys
comfyui, pack = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfyui)
from comfy.cli_args import args
args.cpu = True
name = pack.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, os.path.join(pack, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
extension = module.comfy_entrypoint()
extension = asyncio.run(extension) if inspect.isawaitable(extension) else extension
ids = [node.GET_SCHEMA().node_id for node in asyncio.run(extension.get_node_list())]
print("NODE_IDS=" + json.dumps(sorted(ids)))
"""


@dataclass(frozen=True)
class Sandbox:
    """The folders a test server reads and writes, all under ``root``."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models" / "musetalk"

    @property
    def custom_nodes(self) -> Path:
        return self.root / "custom_nodes"

    @property
    def config(self) -> Path:
        return self.root / "extra_model_paths.yaml"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def temp(self) -> Path:
        """ComfyUI's temp folder: it appends ``temp`` to ``--temp-directory``, which is ``root``."""
        return self.root / "temp"

    @property
    def user(self) -> Path:
        return self.root / "user"

    @property
    def frontend_settings(self) -> Path:
        """The settings file the frontend reads and writes for the single (default) user."""
        return self.user / "default" / "comfy.settings.json"


def make_sandbox(root: Path, pack_dir: Path, media_dir: Path) -> Sandbox:
    """Link the pack into ``custom_nodes/``, write tiny RANDOM weights and the yaml, copy the media into ``input/``."""
    from musetalk_lib.random_weights import write_random_weights

    sandbox = Sandbox(root)
    for folder in (sandbox.custom_nodes, sandbox.input, sandbox.output, sandbox.user):
        folder.mkdir(parents=True, exist_ok=True)
    (sandbox.custom_nodes / PACK_LINK_NAME).symlink_to(pack_dir.resolve(), target_is_directory=True)
    write_random_weights(sandbox.models, size="tiny")
    sandbox.config.write_text(
        "musetalk_test:\n"
        f"  musetalk: {json.dumps(str(sandbox.models))}\n"
        f"  custom_nodes: {json.dumps(str(sandbox.custom_nodes))}\n", encoding="utf-8")
    for item in media_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, sandbox.input / item.name)
    shutil.copytree(media_dir / "landmarks", sandbox.input / "landmarks")
    return sandbox


def write_frontend_settings(sandbox: Sandbox, settings: dict) -> None:
    """Pre-set frontend settings, e.g. ``{"Comfy.TutorialCompleted": True}`` to skip the first-run dialog."""
    sandbox.frontend_settings.parent.mkdir(parents=True, exist_ok=True)
    sandbox.frontend_settings.write_text(json.dumps(settings, indent=4), encoding="utf-8")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def supported_flags(comfyui: Path) -> set[str]:
    """The command-line flags this ComfyUI checkout defines (read from ``comfy/cli_args.py``)."""
    text = (comfyui / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    return set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)", text))


def declared_node_ids(python: str, comfyui: Path, pack_dir: Path, timeout: float = 300) -> list[str]:
    """The node ids the pack's root module declares, imported in a separate ComfyUI Python process."""
    result = subprocess.run([python, "-c", _DECLARED_IDS_SCRIPT, str(comfyui), str(pack_dir)], cwd=comfyui,
                            capture_output=True, text=True, timeout=timeout, env=server_environment())
    marker = [line for line in result.stdout.splitlines() if line.startswith("NODE_IDS=")]
    if result.returncode != 0 or not marker:
        raise AssertionError(f"importing the pack failed (rc {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(marker[-1].removeprefix("NODE_IDS="))


def server_environment() -> dict[str, str]:
    """The environment for ComfyUI processes: few threads, no hub access, unbuffered logs."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


class ComfyUIServer:
    """``main.py --cpu`` on 127.0.0.1 using the sandbox's folders; its log goes to ``<sandbox>/server.log``."""

    def __init__(self, comfyui: Path, python: str, sandbox: Sandbox):
        self.comfyui, self.python, self.sandbox = comfyui, python, sandbox
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = sandbox.root / "server.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The server command line, leaving out optional flags this ComfyUI version lacks."""
        optional = [
            ("--disable-auto-launch",), ("--disable-api-nodes",),
            ("--disable-all-custom-nodes",), ("--whitelist-custom-nodes", PACK_LINK_NAME),
            ("--extra-model-paths-config", str(self.sandbox.config)),
            ("--input-directory", str(self.sandbox.input)), ("--output-directory", str(self.sandbox.output)),
            ("--temp-directory", str(self.sandbox.root)), ("--user-directory", str(self.sandbox.user)),
            ("--database-url", "sqlite:///:memory:"),
        ]
        flags = supported_flags(self.comfyui)
        if "--whitelist-custom-nodes" not in flags:
            optional = [option for option in optional if option[0] != "--disable-all-custom-nodes"]
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port)]
        for option in optional:
            if option[0] in flags:
                command += option
        return command

    def start(self, timeout: float) -> None:
        """Start the server and wait until ``/object_info`` answers; raise with the log tail if it does not."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=server_environment(),
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/object_info", timeout=10) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer /object_info within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, grace: float = 15) -> None:
        """Stop the server (SIGTERM to its own process group, SIGKILL after ``grace`` seconds)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(grace)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log()[-chars:]

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())


@contextmanager
def running_server(comfyui: Path, python: str, root: Path, pack_dir: Path, media_dir: Path, timeout: float,
                   frontend_settings: dict | None = None) -> Iterator[ComfyUIServer]:
    """A server on a fresh sandbox under ``root`` (see ``make_sandbox``), stopped on exit."""
    sandbox = make_sandbox(root, pack_dir, media_dir)
    if frontend_settings:
        write_frontend_settings(sandbox, frontend_settings)
    server = ComfyUIServer(comfyui, python, sandbox)
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()


def chromium_executable() -> str | None:
    """``CHROMIUM_PATH`` (default ``/usr/bin/chromium``) if it is an executable file, else None."""
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


@contextmanager
def chromium(executable: str, timeout: float) -> Iterator[Browser]:
    """A headless Chromium driven by Playwright's sync API (no Playwright-downloaded browser); closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS),
                                             timeout=timeout * 1000)
        try:
            yield browser
        finally:
            browser.close()


def open_frontend(context: BrowserContext, url: str, timeout: float) -> Page:
    """A page of the ComfyUI frontend at ``url`` once the app is ready; requests to other hosts are aborted."""
    context.route(lambda address: not address.startswith(url + "/") and address != url,
                  lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(timeout * 1000)
    page.goto(url)
    page.wait_for_function(FRONTEND_READY)
    return page


def probe_video(path: Path) -> tuple[int, bool]:
    """(decoded video frames, whether there is an audio stream) of a media file, read with PyAV."""
    import av

    with av.open(str(path)) as container:
        has_audio = bool(container.streams.audio)
        if not container.streams.video:
            return 0, has_audio
        frames = sum(1 for _ in container.decode(video=0))
    return frames, has_audio
