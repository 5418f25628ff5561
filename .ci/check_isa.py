"""Check that a restricted-CPU CI pass really runs on the restricted instruction sets.

Usage: ``python .ci/check_isa.py sse4|avx2`` under the environment of that pass (see .ci/run). Exits 1,
naming the library, when a restriction did not take effect, so that a pass never silently tests the
machine's native (AVX-512) kernels twice. Checked: torch's ATen kernels
(``torch.backends.cpu.get_cpu_capability``), oneDNN (the ISA it reports with ONEDNN_VERBOSE while it
runs a convolution), OpenCV (``cv2.checkHardwareSupport``), and MKL where its verbose header names the
instruction set (on AMD CPUs it does not, and MKL is then reported as unchecked).
"""

from __future__ import annotations

import os
import subprocess
import sys

# ATen capability names in increasing order; a cap allows itself and anything below it
ATEN_ORDER = ["DEFAULT", "AVX2", "AVX512"]
# OpenCV's CpuFeatures enum (core/cvdef.h): CV_CPU_AVX = 10, CV_CPU_AVX2 = 11, CV_CPU_FMA3 = 12,
# CV_CPU_AVX_512F = 13
CV_IDS = {"AVX": 10, "AVX2": 11, "FMA3": 12, "AVX512F": 13}
LEVELS = {
    # ATen cap, words that must not appear in oneDNN's or MKL's ISA line, OpenCV features that must be off
    "sse4": ("DEFAULT", ("AVX", "AMX"), ("AVX", "AVX2", "FMA3", "AVX512F")),
    "avx2": ("AVX2", ("AVX-512", "AVX512", "AMX"), ("AVX512F",)),
}

PROBE = """
import torch
x = torch.randn(2, 32, 32, 32)
torch.nn.functional.conv2d(x, torch.randn(32, 32, 3, 3))  # a oneDNN convolution
torch.randn(64, 64) @ torch.randn(64, 64)  # an MKL sgemm
"""


def _verbose_lines() -> list[str]:
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"check_isa: the probe failed:\n{out.stderr[-2000:]}")
    return (out.stdout + out.stderr).splitlines()


def main(level: str) -> int:
    import cv2
    import torch

    aten_cap, banned, cv_off = LEVELS[level]
    problems, report = [], []

    aten = torch.backends.cpu.get_cpu_capability()
    report.append(f"torch ATen {aten}")
    if ATEN_ORDER.index(aten) > ATEN_ORDER.index(aten_cap):
        problems.append(f"torch runs {aten} kernels, above {aten_cap} (ATEN_CPU_CAPABILITY not honoured)")

    lines = _verbose_lines()
    onednn = next(
        (line.split("isa:", 1)[1] for line in lines if "onednn_verbose" in line and "isa:" in line), None
    )
    if onednn is None:
        if torch.backends.mkldnn.is_available():
            problems.append("oneDNN did not report its ISA (ONEDNN_VERBOSE)")
    else:
        report.append(f"oneDNN {onednn}")
        if any(word in onednn for word in banned):
            problems.append(f"oneDNN runs {onednn} (ONEDNN_MAX_CPU_ISA not honoured)")
    mkl = next(
        (line for line in lines if line.startswith("MKL_VERBOSE oneMKL") or "MKL_VERBOSE Intel" in line), None
    )
    if mkl is not None:
        isa_named = any(word in mkl for word in ("SSE", "AVX", "AMX"))
        report.append(
            "MKL " + ("checked" if isa_named else "unchecked (its header names no ISA on this CPU)")
        )
        if isa_named and any(word in mkl for word in banned):
            problems.append(f"MKL runs {mkl} (MKL_ENABLE_INSTRUCTIONS not honoured)")

    still_on = [name for name in cv_off if cv2.checkHardwareSupport(CV_IDS[name])]
    report.append(f"OpenCV off: {', '.join(name for name in cv_off if name not in still_on)}")
    if still_on:
        problems.append(f"OpenCV still uses {', '.join(still_on)} (OPENCV_CPU_DISABLE not honoured)")

    print(f"check_isa {level}: " + "; ".join(report))
    for problem in problems:
        print(f"check_isa {level}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in LEVELS:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(LEVELS)}")
    sys.exit(main(sys.argv[1]))
