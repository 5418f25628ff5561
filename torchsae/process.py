"""Whether a process is alive, portably: the one probe the run lock and the data-worker lifeline share.

Why a module of its own: both ask the same question about a PID they recorded (the run folder's holder,
the trainer a data worker serves), and the answer has platform traps — a zombie is dead on Linux yet
``os.kill(pid, 0)`` succeeds on it, and on Windows ``os.kill(pid, 0)`` *terminates* the process.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs: ``/proc`` on Linux (zombies count as dead), else psutil, else a
    signal-0 probe on POSIX; on Windows without psutil the answer is "alive" (no safe probe)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self/stat").exists():  # Linux: a zombie is dead too
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        import psutil  # type: ignore[import-not-found]

        if not psutil.pid_exists(pid):
            return False
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:
        pass
    except Exception:  # psutil.NoSuchProcess between the two calls
        return False
    if os.name != "posix":
        return True  # unknown: assume alive (os.kill(pid, 0) would terminate it on Windows)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
