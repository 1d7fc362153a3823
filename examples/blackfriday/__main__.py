"""`python -m examples.blackfriday`: run the sale on --url (default: a fresh embedded Redis)."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from streamtasks.demo.display import Display
from streamtasks.demo.run import fresh_embedded, write_report
from streamtasks.demo.sale import SEED, WORKERS, run_sale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.blackfriday", description=__doc__)
    parser.add_argument("--url", help="Redis URL (default: embedded:// in a temporary directory)")
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help="who clicks how often, whose card is declined (default: %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help="worker processes (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.url or stack.enter_context(fresh_embedded())
        display = None if args.json else Display()
        report = run_sale(url, seed=args.seed, workers=args.workers, display=display)
    return write_report(report, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
