"""`--log-format json`: one JSON object a line, for log pipelines that index fields.

Each object has `time` (ISO 8601, UTC), `level`, `logger` and `message`; a line about a task adds
`task_id`, `task`, `queue`, `attempt`, `outcome`, `duration_s` and `worker` (those the line
knows), and a failure adds `traceback`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

# Fields streamtasks passes as `extra=` on its log lines, and the name each has in the JSON.
_FIELDS = {
    "task_id": "task_id",
    "task": "task",
    "queue": "queue",
    "attempt": "attempt",
    "outcome": "outcome",
    "seconds": "duration_s",
    "worker": "worker",
    "key": "key",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for attribute, name in _FIELDS.items():
            if attribute in fields:
                out[name] = fields[attribute]
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        elif fields.get("traceback"):
            out["traceback"] = fields["traceback"]
        return json.dumps(out, default=str)
