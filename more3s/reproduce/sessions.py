"""The grid's wall time over the invocations that ran it.

A grid may span sessions (killed, resumed, continued on another machine), and a cell's own ``wall_s`` counts only
its last attempt, so neither adds up to what the grid cost. Each invocation records in ``grid.json`` when it
started, where, and how far it got after every finished cell; the outputs sum them. An invocation that was killed
counts up to its last finished cell (its unfinished cells' time is lost, and so not counted).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Session", "read_sessions", "describe_sessions"]


@dataclass
class Session:
    """One invocation of the grid (preparing its data, then running its cells)."""

    started: float  # unix time
    commit: str
    host: str
    jobs: int
    last_progress: float  # unix time of its last finished cell (or its start)
    cells_to_run: int = 0  # known once its data are prepared
    cells_finished: int = 0
    ended: float | None = None  # None: still running, or killed

    @classmethod
    def start(cls, commit: str, jobs: int) -> "Session":
        now = time.time()
        return cls(started=now, commit=commit, host=platform.node(), jobs=jobs, last_progress=now)

    @property
    def wall_s(self) -> float:
        return (self.ended if self.ended is not None else self.last_progress) - self.started

    def cell_done(self) -> None:
        self.cells_finished += 1
        self.last_progress = time.time()

    def end(self) -> None:
        self.ended = self.last_progress = time.time()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wall_s": round(self.wall_s, 1)}


def read_sessions(grid_json: Path) -> list[Session]:
    """The sessions an earlier grid.json recorded ([] for none, or a file of another format)."""
    try:
        rows = json.loads(Path(grid_json).read_text()).get("sessions", [])
        return [Session(**{k: v for k, v in r.items() if k != "wall_s"}) for r in rows]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def describe_sessions(sessions: list[Session]) -> str:
    """One line for the outputs: the grid's summed wall time and what it ran in."""
    if not sessions:
        return "Grid wall time: not recorded."
    hours = sum(s.wall_s for s in sessions) / 3600
    cells = sum(s.cells_finished for s in sessions)
    jobs = sorted({s.jobs for s in sessions})
    killed = sum(s.ended is None for s in sessions)
    return (f"Grid wall time: {hours:.2f} h over {len(sessions)} invocation(s) with --jobs "
            f"{'/'.join(map(str, jobs))}, {cells} cell(s) finished in them"
            + (f" ({killed} killed or still running: counted to its last finished cell)" if killed else "") + ".")
