"""streamtasks: a Celery-style task queue on Redis Streams.

from streamtasks import App

app = App("shop", url="redis://localhost:6379/0")

@app.task(queue="orders")
def place_order(order_id: str, qty: int) -> dict: ...

place_order.delay("o-1", 2).get(timeout=5)
"""

import importlib.metadata

from streamtasks.app import App
from streamtasks.context import TaskContext, current_task
from streamtasks.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    EncodeError,
    IdempotencyConflict,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    StreamTasksError,
    TaskControl,
    TaskError,
    TaskRevoked,
    TimeLimitExceeded,
    TimeoutError,
)
from streamtasks.result import AsyncResult
from streamtasks.task import Task
from streamtasks.worker import Worker

try:
    __version__ = importlib.metadata.version("streamtasks-queue")
except importlib.metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "App",
    "AsyncResult",
    "BrokerUnavailable",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "IdempotencyConflict",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "StreamTasksError",
    "Task",
    "TaskContext",
    "TaskControl",
    "TaskError",
    "TaskRevoked",
    "TimeLimitExceeded",
    "TimeoutError",
    "Worker",
    "current_task",
]
