"""``scripts/device-check --device cpu --quick``: the one-shot device check runs end to end (the CI smoke test)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device-check"


def test_quick_device_check_on_cpu():
    result = subprocess.run([str(SCRIPT), "--device", "cpu", "--quick", "--python", sys.executable],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    out = result.stdout
    assert f"Python {sys.executable}" in out and "Device cpu:" in out
    assert "golden differences on cpu in bf16 (reported, not asserted)" in out
    table = out.split("## Device check")[1]
    assert "| measurement | fp32, full decode (reference) | fp16, partial decode | bf16, partial decode |" in table
    assert "| golden cases on cpu | 2 passed, 17 deselected |" in table
    assert "| 320x180: unet (batch 2) (frames/s) | - |" in table
    assert "| 320x180: end to end (frames/s) | - |" in table and "| 320x180: peak RSS (MB) | - |" in table
    assert "FAILED" not in table and "| failed" not in table
