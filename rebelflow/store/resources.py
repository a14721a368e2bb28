"""What a stage used, for its manifest: the peak resident memory of the process that made it (and the
peak GPU memory torch allocated there on its current device, when it used a GPU).

A stage in its own process (subprocess; under accelerate, rank 0's) peaks over that process's life. An
in-process stage shares the flow's process: the launcher resets the peaks before the stage starts
(Linux's /proc/self/clear_refs; elsewhere the RSS peak is the process's since it started), so its peak
includes what the flow's process already held. Helper processes (vLLM's engine core) are not counted."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_rss() -> None:
    """Start measuring this process's peak resident memory afresh (an in-process stage is about to run)."""
    try:
        CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        pass
    torch = _torch_on_gpu()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started or since `reset_peak_rss`, in MiB."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def usage() -> dict[str, Any]:
    """The manifest's `resources`: peak RSS (MiB) and, if torch used a GPU here, its peak allocation."""
    out: dict[str, Any] = {"peak_rss_mib": round(peak_rss_mib(), 1)}
    torch = _torch_on_gpu()
    if torch is not None:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _torch_on_gpu():
    """torch, when this process has imported it and used a GPU (never imports it)."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


def recorded_peak(manifest: dict[str, Any]) -> float | None:
    """The peak resident memory (MiB) a manifest records for the making of its artifact (None for an
    artifact made before rebelflow recorded it)."""
    return manifest.get("resources", {}).get("peak_rss_mib")
