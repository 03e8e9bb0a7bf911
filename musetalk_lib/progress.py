"""Progress of long work: one protocol for every stage, and its terminal rendering.

Every long stage (face detection, VAE encoding, audio features, generation,
preprocessing, training) takes an optional ``progress`` and calls it as
``progress(stage, done, total)`` after each batch: ``stage`` names the work,
``done`` of ``total`` items are finished. A progress callable may raise to stop
the work (ComfyUI's Cancel does); the stages leave nothing half-written then.

Two renderings exist: :class:`TerminalProgress` (the ``musetalk`` command and
``training/``) and the ComfyUI nodes' progress bars (``nodes/runtime.py``).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Called after each batch of a stage; may raise to stop the work."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...


class TerminalProgress:
    """One tqdm bar per stage on standard error; closed when its stage is done.

    ``enabled=False`` shows nothing (``musetalk -q``, or the ranks of a
    multi-process run other than the main one).
    """

    def __init__(self, enabled: bool = True, unit: str = "frame"):
        self.enabled = enabled
        self.unit = unit
        self._bars: dict = {}

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None:
        """Advance ``stage``'s bar to ``done`` of ``total``; ``detail`` (e.g. the loss) is shown after it."""
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, initial=done, desc=stage, unit=self.unit,
                                           dynamic_ncols=True)
        if detail:
            bar.set_postfix_str(detail, refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[stage]

    def write(self, message: str) -> None:
        """Print ``message`` on its own line, above the bars (shown even when disabled)."""
        from tqdm import tqdm

        tqdm.write(message)

    def close(self) -> None:
        """Close every bar (after an error or an interrupt)."""
        for bar in self._bars.values():
            bar.close()
