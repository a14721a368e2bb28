"""What every rehearsal does the same way: a list of substitutions, launchers scaled to this machine, the
rehearsal's own store and inputs folder, models built under a lock."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rebelflow.store.local import Store

MAX_RANKS = 2  # processes per accelerate launch in a rehearsal: enough to exercise the collectives
SMALL_NEW_TOKENS = 16


@dataclass
class Rehearsal:
    """A rehearsal being made: the raw config it edits, the substitutions so far, where its inputs go."""

    raw: dict[str, Any]
    store: Store
    notes: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> Path:
        return self.store.root / "rehearsal"

    def note(self, key: str, old: Any, new: Any, why: str = "") -> None:
        self.notes.append(f"{key}: {old} -> {new}" + (f"  ({why})" if why else ""))

    def set(self, path: str, value: Any, why: str = "", old: Any = "(default)") -> None:
        """Set raw[a][b]... = value and note it when it changes what the config said (`old`: the preset's
        value, when the raw config leaves it to a default)."""
        *parents, key = path.split(".")
        node = section(self.raw, *parents)
        old = old if node.get(key) is None else node[key]
        node[key] = value
        if old != value:
            self.note(path, old, value, why)

    def shrink(self, path: str, current: Any, cap: int, why: str = "") -> None:
        """Lower a size to `cap` when it is larger (or unset: None means "all")."""
        if current is None or current > cap:
            self.set(path, cap, why, old=current)


def section(raw: dict[str, Any], *keys: str) -> dict[str, Any]:
    """raw[k1][k2]..., created as empty mappings where missing."""
    node = raw
    for key in keys:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    return node


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:] or "data"


def rehearsal_store(store: str | None, configured: str) -> str:
    """The rehearsal's own store: the one given with --store, else the config's with -rehearsal appended,
    so rehearsal artifacts never mix with a real run's."""
    return store if store is not None else f"{configured.rstrip('/')}-rehearsal"


def scale_launcher(r: Rehearsal, path: str, launcher) -> int:
    """At most MAX_RANKS processes per accelerate launch (same launch config, over gloo on CPU); returns the
    number of ranks the stage will have. The count may come from the launch config file."""
    if launcher.kind != "accelerate":
        return 1
    ranks = launcher.num_processes
    if ranks is None and launcher.config_file:
        ranks = (yaml.safe_load(Path(launcher.config_file).read_text()) or {}).get("num_processes")
    ranks = ranks or 1
    if ranks > MAX_RANKS:
        r.set(f"{path}.num_processes", MAX_RANKS, "processes over gloo on this machine's CPU", old=ranks)
        ranks = MAX_RANKS
    return ranks


def cpu_dtype(r: Rehearsal, path: str, dtype: str) -> None:
    """16-bit dtypes as this CPU runs them: float16 kernels are missing on CPU; bfloat16 stays where the CPU
    computes it natively, else float32 (emulated bf16 is about 12× slower, and a preset's rehearsal would take
    an hour instead of minutes)."""
    if dtype not in ("float16", "bfloat16"):
        return
    from rebelflow.ml.models import cpu_has_bf16  # torch: imported only when a rehearsal needs it

    native = cpu_has_bf16()
    if dtype == "float16":
        r.set(path, "bfloat16" if native else "float32", "float16 kernels are missing on CPU"
              + ("" if native else ", and this CPU has no bf16 instructions (AVX512-BF16, AMX)"))
    elif not native:
        r.set(path, "float32", "this CPU has no bf16 instructions (AVX512-BF16, AMX): emulated bf16 is ~12× slower")


def tracking_offline(r: Rehearsal, wandb) -> None:
    if wandb is not None and wandb.mode == "online":
        r.set("tracking.wandb.mode", "offline", "nothing leaves this machine")
