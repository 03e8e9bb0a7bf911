#!/usr/bin/env python3
"""The closing Markdown table of ``scripts/device-check``: golden results and ``musetalk bench`` figures.

``python scripts/device_check_table.py FOLDER --device cuda --golden-dtypes fp32 fp16 bf16
--bench-dtypes fp16 bf16 --sizes 1280x720 1920x1080 --weights "RANDOM full"`` reads, from FOLDER,
``golden-<dtype>.log`` (the output of a pytest run of ``test_golden.py``) and
``bench-<size>-<dtype>.json`` (``musetalk bench --json``), and prints one table:
a column for the fp32 reference and one per bench dtype; a row for the golden
suite, then per frame size one row per bench stage (frames/s, with the ratio
to the reference measured in the same run) and per memory figure (MB). A
missing report shows as "failed", a golden run whose log ends with
device-check's ``FAILED (status)`` line as "FAILED".
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

PYTEST_SUMMARY = re.compile(r"(\d+ [a-z]+(?:, \d+ [a-z]+)*) in [\d.]+s")


def golden_summary(log: Path) -> str:
    """pytest's closing counts (``10 passed, 9 xfailed``), with "FAILED" when device-check's last log line says so."""
    if not log.is_file():
        return "FAILED (no log)"
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    counts = [match for line in lines for match in PYTEST_SUMMARY.findall(line)]
    summary = counts[-1] if counts else "no pytest summary"
    return f"FAILED ({summary})" if lines and "FAILED (" in lines[-1] else summary


def load_report(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fps(configuration: dict | None, stage: str) -> float | None:
    if configuration is None:
        return None
    return next((row["fps"] for row in configuration["stages"] if row["stage"] == stage), None)


def _cell(value: float | None, digits: int, ratio: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" (×{ratio:.2f})" if ratio is not None else "")


def size_rows(size: str, reports: dict[str, dict | None]) -> list[list[str]]:
    """Rows ``[label, reference, one cell per dtype]`` for one frame size; ``reports`` maps dtype to bench report."""
    present = [report for report in reports.values() if report is not None]
    if not present:
        return [[f"{size}: bench"] + ["failed"] * (len(reports) + 1)]
    reference = next((report["reference"] for report in present if report["reference"]), None)
    first = present[0]["chosen"]
    rows = []
    for stage in [row["stage"] for row in first["stages"]]:
        rows.append([f"{size}: {stage} (frames/s)", _cell(_fps(reference, stage), 1)] + [
            "failed" if report is None else _cell(_fps(report["chosen"], stage), 1, report["ratios"]["fps"].get(stage))
            for report in reports.values()])
    for name in first["memory_mb"]:
        rows.append([f"{size}: {name} (MB)", _cell(reference["memory_mb"].get(name) if reference else None, 0)] + [
            "failed" if report is None
            else _cell(report["chosen"]["memory_mb"].get(name), 0, report["ratios"]["memory"].get(name))
            for report in reports.values()])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where device-check wrote the logs and JSON reports")
    parser.add_argument("--device", required=True, help="the device the checks ran on (for the table's labels)")
    parser.add_argument("--golden-dtypes", nargs="+", required=True, help="dtypes of the golden runs")
    parser.add_argument("--bench-dtypes", nargs="+", required=True, help="dtypes of the bench runs (chosen)")
    parser.add_argument("--sizes", nargs="+", required=True, help="frame sizes of the bench runs, WIDTHxHEIGHT")
    parser.add_argument("--weights", required=True, help="what the bench's weights are, e.g. 'RANDOM full'")
    args = parser.parse_args()

    reports = {size: {dtype: load_report(args.folder / f"bench-{size}-{dtype}.json") for dtype in args.bench_dtypes}
               for size in args.sizes}
    any_report = next((r for by_dtype in reports.values() for r in by_dtype.values() if r is not None), None)
    decode = any_report["chosen"]["decode"] if any_report else "partial"
    header = ["measurement", "fp32, full decode (reference)"]
    header += [f"{dtype}, {decode} decode" for dtype in args.bench_dtypes]
    golden = {dtype: golden_summary(args.folder / f"golden-{dtype}.log") for dtype in args.golden_dtypes}
    rows = [[f"golden cases on {args.device}"] + [golden.get(dtype, "-") for dtype in ["fp32", *args.bench_dtypes]]]
    for size in args.sizes:
        rows += size_rows(size, reports[size])

    if any_report:
        setup = any_report["setup"]
        gpu = f" ({setup['gpu']})" if setup["gpu"] else ""
        print(f"`musetalk bench` on {setup['device']}{gpu}, torch {setup['torch']}, {args.weights} weights, "
              f"{setup['face_size']}-pixel face, {setup['seconds']:g} s at {setup['fps']:g} fps; end to end and avatar "
              f"preparation at batch {setup['batch_sizes'][0]}; ratios against the reference of the same run.\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
