"""A run's progress on the console: one line per stage — round, step, ran or cached, its seconds, how many of
the run's stages are done and the time left — on the logger `rebelflow.progress`, which the CLI shows even
when everything else goes to the run's log file (ops.console.run_console). A line marked `transient`
("running…") is shown only on a terminal, where the stage's final line replaces it."""

from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("rebelflow.progress")
LOGGER.propagate = False  # its own handlers (the CLI's); Prefect's console handler on the root would repeat it


class Progress:
    """The stages a run will go through, in order, and how long the ones that ran took. The time left is
    each remaining stage's estimate: that step's last run in this campaign (a round takes about as long as
    the one before), else the mean of the stages that ran; cached stages cost nothing."""

    def __init__(self) -> None:
        self.start([])

    def start(self, planned: list[tuple[int, str]]) -> None:
        self.planned, self.done, self.took, self.started = list(planned), 0, {}, time.time()

    def begin(self, round_k: int, step: str) -> None:
        LOGGER.info("%s running…", _head(round_k, step), extra={"transient": True})

    def end(self, round_k: int, step: str, status: str, seconds: float) -> None:
        self.done += 1
        if (round_k, step) in self.planned:
            self.planned.remove((round_k, step))
        if status == "ran":
            self.took[step] = seconds
        where = f" · {self.done}/{self.done + len(self.planned)} stages" if self.planned or self.done > 1 else ""
        left = self.left()
        eta = f" · about {clock(left)} left" if left else ""
        LOGGER.info("%s %-6s %8s%s%s", _head(round_k, step), status, clock(seconds), where, eta)

    def failed(self, round_k: int, step: str, seconds: float) -> None:
        LOGGER.info("%s failed %8s", _head(round_k, step), clock(seconds))

    def left(self) -> float | None:
        """Seconds the remaining stages should take, or None before any stage ran (nothing to go by)."""
        if not self.took or not self.planned:
            return None
        mean = sum(self.took.values()) / len(self.took)
        return sum(self.took.get(step, mean) for _, step in self.planned)


def _head(round_k: int, step: str) -> str:
    return f"round {round_k} · {step:<14}"


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


PROGRESS = Progress()  # the current run's (a CLI process runs one campaign at a time)
