"""A minimal stand-in for ComfyUI's ``comfy_api`` package, for tests without a ComfyUI checkout (never shipped)."""
