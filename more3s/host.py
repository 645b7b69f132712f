"""What machine a job ran on: recorded with every run (run.json) and every reproduction grid (grid.json).

Float results repeat bit for bit only on the same kind of CPU with the same thread count (two-thread training on an
AMD EPYC and on an Intel Xeon drift apart from step 20), so a stored run says which host and threads gave it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_model", "machine"]


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """The host and software a job runs on; ``threads`` is torch's intra-op thread count at the call."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "gpus": gpus}
