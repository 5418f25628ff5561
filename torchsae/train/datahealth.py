"""Data problems the user must hear about: files the index skipped, decodes that failed mid-run.

Why: both are silent otherwise. The index lists its skipped files in ``skipped.json`` but training
never said how many there were, and a file that fails to decode during training is replaced by the
next one (``pipelines.torch_loader``), so a faceset on a failing disk trained on quietly (136
replacements in one probe). The counts are printed at start, logged as ``data/skipped_files`` and
``data/decode_failures``, and a warning is printed once failures pass ``WARN_SHARE`` of the samples
drawn in this run (at least ``WARN_MIN``).
"""

from __future__ import annotations

from typing import Any

WARN_SHARE = 0.01
WARN_MIN = 10


class DataHealth:
    """Counts for one rank's training stream (only rank 0 reports)."""

    def __init__(self, data: Any, samples_per_step: int) -> None:
        self.data = data
        self.samples_per_step = samples_per_step
        self.indexes = dict(getattr(data, "indexes", {}) or {})
        self.start_failed = self.failed()
        self.warned = False

    def failed(self) -> int:
        return int(getattr(self.data, "failed", 0) or 0)

    def skipped(self) -> int:
        return sum(len(index.skipped) for index in self.indexes.values())

    def start_lines(self) -> list[str]:
        """One line per side whose index skipped files (with where the reasons are)."""
        lines = []
        for side, index in sorted(self.indexes.items()):
            if index.skipped:
                lines.append(
                    f"Side {side.upper()}: {len(index)} faces used, {len(index.skipped)} files skipped "
                    f"by the index (reasons: {index.directory / 'skipped.json'}, or torchsae index "
                    f"{index.root})"
                )
        if self.start_failed:
            lines.append(f"{self.start_failed} files failed to decode earlier in this run and were replaced")
        return lines

    def closing_line(self) -> str | None:
        """The run's decode failures, said once more at the end (None when there were none)."""
        new = self.failed() - self.start_failed
        if new <= 0:
            return None
        return f"{new} files failed to decode in this run and were replaced by other faces"

    def scalars(self) -> dict[str, float]:
        return {"data/skipped_files": float(self.skipped()), "data/decode_failures": float(self.failed())}

    def warning(self, steps_run: int) -> str | None:
        """A line, once, when this run's decode failures pass the threshold."""
        new = self.failed() - self.start_failed
        drawn = max(steps_run, 0) * self.samples_per_step
        if self.warned or new < WARN_MIN or new <= WARN_SHARE * drawn:
            return None
        self.warned = True
        return (
            f"Warning: {new} of {drawn} samples failed to decode in this run and were replaced by other "
            "faces; check the disk and the facesets (torchsae index --verify)"
        )
