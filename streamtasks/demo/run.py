"""Running the sale for a user: `streamtasks demo` on a fresh embedded Redis, and the report as
text or JSON with the exit status both entry points share."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from streamtasks import embedded
from streamtasks.demo.display import Display
from streamtasks.demo.sale import (
    BUYERS,
    PRODUCT,
    REQUESTS,
    STOCK,
    THREADS,
    WORKERS,
    Report,
    run_sale,
)


@contextmanager
def fresh_embedded() -> Iterator[str]:
    """An embedded:// URL on a new data dir; its server is stopped and the dir removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="streamtasks-demo-"))
    try:
        yield f"embedded://{directory}"
    finally:
        embedded.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


def write_report(report: Report, *, as_json: bool, out: IO[str] | None = None) -> int:
    """Write the report to `out` (stdout by default); the exit status is 0 when every unit was
    sold exactly once and no order was charged twice, 1 otherwise."""
    out = out or sys.stdout
    out.write(json.dumps(report.as_dict(), indent=2) if as_json else "\n" + report.format())
    out.write("\n")
    return 0 if report.final_stock == 0 and report.charged_twice == 0 else 1


def run_demo(as_json: bool = False, out: IO[str] | None = None) -> int:
    """`streamtasks demo`: the sale on a fresh embedded Redis, with progress, then the report."""
    out = out or sys.stdout
    display = None if as_json else Display(out)
    if display is not None:
        out.write(
            f"Black Friday: {REQUESTS:,} order requests from {BUYERS} buyers on {THREADS} "
            f"threads for product {PRODUCT} (stock {STOCK}), {WORKERS} worker processes\n"
        )
    with fresh_embedded() as url:
        report = run_sale(url, display=display)
    return write_report(report, as_json=as_json, out=out)
