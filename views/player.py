"""Playback: a timer that presses "next step" at an interval the learner can change."""
from __future__ import annotations

from typing import Callable


class Player:
    """`toggle` starts or pauses; `speed(f)` multiplies the interval by f (0.02–3 s)."""

    def __init__(self, set_interval: Callable, tick: Callable[[], None], interval: float = 0.3) -> None:
        self.set_interval, self.tick, self.interval = set_interval, tick, interval
        self.timer = None

    def toggle(self) -> str:
        if self.timer is None:
            self.timer = self.set_interval(self.interval, self.tick)
            return f"playing every {self.interval:.2f}s (+/- to change)"
        self.timer.stop()
        self.timer = None
        return "paused"

    def speed(self, factor: float) -> str:
        self.interval = float(min(max(self.interval * factor, 0.02), 3.0))
        if self.timer is not None:
            self.timer.stop()
            self.timer = self.set_interval(self.interval, self.tick)
        return f"step every {self.interval:.2f}s"
