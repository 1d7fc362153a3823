"""The live progress display of a sale: a snapshot of its counters, drawn in place on a terminal
or as a plain line a second otherwise."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True)
class Snapshot:
    """The sale's counters at one instant, and the state of each worker by short name."""

    accepted: int
    sold: int
    sold_out: int
    paid: int
    declined: int
    retries: int
    stock: int
    workers: dict[str, str]


class Display:
    """Progress while the sale runs: redrawn in place on a terminal, a line a second otherwise."""

    def __init__(self, out: IO[str] | None = None, live: bool | None = None, every: float = 1.0):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.every = every
        self._drawn = 0
        self._last = 0.0

    def event(self, elapsed: float, text: str) -> None:
        self._erase()
        self.out.write(f"[{elapsed:4.1f}s] {text}\n")
        self.out.flush()

    def update(self, elapsed: float, s: Snapshot, final: bool = False) -> None:
        up = sum(state == "up" for state in s.workers.values())
        workers = "  ".join(f"{name} {state}" for name, state in s.workers.items())
        if self.live:
            self._erase()
            lines = [
                f"  orders    {s.accepted:>4} accepted  {s.sold:>4} sold  {s.sold_out:>4} sold out"
                f"  stock left {s.stock}",
                f"  payments  {s.paid:>4} paid      {s.declined:>4} declined"
                f"  {s.retries:>4} retries",
                f"  workers   {workers}   {elapsed:4.1f}s",
            ]
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        elif final or elapsed - self._last >= self.every:
            self._last = elapsed
            self.out.write(
                f"[{elapsed:4.1f}s] orders: {s.accepted} accepted, {s.sold} sold, {s.sold_out} "
                f"sold out | payments: {s.paid} paid, {s.declined} declined, {s.retries} retries "
                f"| stock {s.stock} | workers up {up}/{len(s.workers)}\n"
            )
        self.out.flush()

    def _erase(self) -> None:
        """Clear the block drawn last, if any, so what is written next takes its place."""
        if self.live and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the block's first line, clear
        self._drawn = 0
