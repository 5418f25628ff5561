"""Appending a measured table to ``benchmarks/RESULTS.md``: the one writer every benchmark script uses.

Why a helper: several benchmarks append to the same file, possibly one after another in one session,
so each append re-reads the file just before writing and replaces it atomically (never a half table).
"""

from __future__ import annotations

from pathlib import Path

from torchsae.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nMeasured tables, newest last.\n"


def append_results(section: str, path: Path = RESULTS) -> None:
    """Append ``section`` (Markdown) to RESULTS.md, creating it with its header if missing."""
    current = path.read_text(encoding="utf-8") if path.exists() else HEADER
    atomic_write_text(path, current.rstrip("\n") + "\n\n" + section)
