"""Registry metadata and dependency lists stay consistent."""

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FRONTEND = "comfyui-frontend-package"


def requirement_names(lines):
    return {re.split(r"[<>=!~ ;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-"): line.strip()
            for line in lines if line.strip() and not line.strip().startswith("#")}


def test_project_metadata_follows_the_registry_rules():
    project = PYPROJECT["project"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,99}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (REPO / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://github.com/")
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].endswith("docs/icon.png")
    assert (REPO / "docs" / "icon.png").is_file()
    assert any(dependency.startswith(FRONTEND) for dependency in project["dependencies"])


def test_requirements_match_the_project_dependencies():
    declared = requirement_names(PYPROJECT["project"]["dependencies"])
    required = requirement_names((REPO / "requirements.txt").read_text().splitlines())
    del declared[FRONTEND]
    assert declared == required


def test_console_script_points_at_the_cli():
    assert PYPROJECT["project"]["scripts"]["musetalk"] == "musetalk_cli.main:main"
