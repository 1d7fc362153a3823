"""The Black Friday demo: a shop's tasks, a sale that runs them on real worker processes
and kills one with SIGKILL mid-run, the live progress display, and the report.

`streamtasks demo` runs it on a fresh embedded Redis; `python -m examples.blackfriday` on any URL.
`shop` is the code a user writes; `sale` drives the sale on the worker processes of `crew` and
measures it, `display` shows its progress, and `run` is the command around them. The shop's
`app` is re-exported here because workers load it as `streamtasks.demo:app`.
"""

from streamtasks.demo.display import Display, Snapshot
from streamtasks.demo.run import fresh_embedded, run_demo, write_report
from streamtasks.demo.sale import Report, run_sale
from streamtasks.demo.shop import app, charge_payment, place_order

__all__ = [
    "Display",
    "Report",
    "Snapshot",
    "app",
    "charge_payment",
    "fresh_embedded",
    "place_order",
    "run_demo",
    "run_sale",
    "write_report",
]
