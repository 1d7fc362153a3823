"""The `streamtasks` command: a thin click layer over the library; logging is set up here only.

Each command has a module of its own (worker, dlq, status); this one holds the group, the small
commands, and the one place failures are worded.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from streamtasks.cli.dlq import dlq
from streamtasks.cli.options import AS_JSON
from streamtasks.cli.status import status
from streamtasks.cli.worker import worker
from streamtasks.errors import StreamTasksError

# click >= 8.2 raises this for a group run without arguments; its message is the group's help.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamtasks-queue")
def main() -> None:
    """streamtasks: a task queue on Redis Streams."""


main.add_command(worker)
main.add_command(dlq)
main.add_command(status)


@main.command()
@AS_JSON
def demo(as_json: bool) -> None:
    """Black Friday on an embedded Redis: 1,000 orders for 100 units, one worker killed mid-run."""
    from streamtasks.demo import run_demo

    sys.exit(run_demo(as_json=as_json))


def run() -> None:
    """Entry point, and the one place failures are worded: `error: <message>` on stderr, exit 1;
    a usage error prints the usage line first and exits 2."""
    try:
        code = main(standalone_mode=False)
    except click.UsageError as exc:
        if isinstance(exc, _NO_ARGS_IS_HELP):  # `streamtasks dlq` alone: the help, not an error
            exc.show()
            sys.exit(exc.exit_code)
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.\n", err=True)
        _fail(exc.format_message(), exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:  # a declined prompt, Ctrl-C or end of input at one
        _fail("aborted", 1)
    except StreamTasksError as exc:
        _fail(str(exc), 1)
    # Without standalone mode click returns the code of an explicit exit (--help, --version).
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
