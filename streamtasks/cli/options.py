"""What the `streamtasks` commands share: how they are told the app, its URL and its queues."""

from __future__ import annotations

from typing import Any

import click

from streamtasks.app import App, load_app
from streamtasks.errors import ConfigurationError


class AppParam(click.ParamType):  # type: ignore[type-arg]
    name = "module:app"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> App:
        if isinstance(value, App):
            return value
        try:
            return load_app(value)
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


APP = click.option(
    "-A",
    "--app",
    "app",
    type=AppParam(),
    required=True,
    help="The App to use, as module:attribute (e.g. shop.tasks:app).",
)
URL = click.option("--url", help="Redis URL; overrides the app's own and STREAMTASKS_URL.")


def use_url(app: App, url: str | None) -> App:
    if url:
        app.url = url
    return app


def queue_list(value: str | None) -> list[str] | None:
    return [q.strip() for q in value.split(",") if q.strip()] if value else None


QUEUES = click.option(
    "-Q",
    "--queues",
    "--queue",
    "queues",
    help="Comma-separated queues (default: every queue of the app).",
)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def app_queues(app: App) -> list[str]:
    return app.queues or [app.default_queue]
