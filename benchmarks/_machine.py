"""What machine a benchmark ran on, for its printout and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    """CPU model (from lscpu) and core count, e.g. ``AMD EPYC 7B13, 2 cores``."""
    try:
        model = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True,
                               timeout=10).stdout.split(":", 1)[1].strip()
    except (IndexError, subprocess.SubprocessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"
