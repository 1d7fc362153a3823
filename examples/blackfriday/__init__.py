"""Black Friday: 1,000 order requests for 100 units, double clicks, flaky payments, a
worker killed mid-run.

The shop's code (two tasks, a stock script, a fake gateway) is `streamtasks/demo/shop.py`, which
`streamtasks demo` runs too; this package runs it against any Redis:

    python -m examples.blackfriday [--url URL] [--seed N] [--workers N] [--json]

Its workers are ordinary `streamtasks worker -A streamtasks.demo:app` processes.
"""

from streamtasks.demo.shop import app, charge_payment, place_order

__all__ = ["app", "charge_payment", "place_order"]
