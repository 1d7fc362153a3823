"""The peers streamtasks is measured against, each run only when its package is installed."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

from benchmarks.drain import Contestant

#: Peer name -> (distribution to check, module under benchmarks.peers that drives it).
PEERS = {
    "celery": ("celery", "benchmarks.peers.celery_peer"),
    "dramatiq": ("dramatiq", "benchmarks.peers.dramatiq_peer"),
    "arq": ("arq", "benchmarks.peers.arq_peer"),
    "taskiq-redis": ("taskiq-redis", "benchmarks.peers.taskiq_peer"),
    "streaq": ("streaq", "benchmarks.peers.streaq_peer"),
    "huey": ("huey", "benchmarks.peers.huey_peer"),
}
NAMES = list(PEERS)


@dataclass
class Peer:
    name: str
    version: str
    module: Any

    @property
    def settings(self) -> str:
        return str(self.module.SETTINGS)

    def contestant(self) -> Contestant:
        return self.module.contestant()  # type: ignore[no-any-return]


def available() -> tuple[list[Peer], dict[str, str]]:
    """The peers that import here, and why each other one is skipped."""
    found, skipped = [], {}
    for name, (dist, module_name) in PEERS.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            skipped[name] = f"not installed: pip install -e '.[bench]' ({dist})"
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            skipped[name] = f"installed ({version}) but cannot be loaded here: {exc}"
            continue
        found.append(Peer(name, version, module))
    return found, skipped
