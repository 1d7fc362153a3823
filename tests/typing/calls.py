"""Checked by mypy in CI (`mypy tests/typing`), never run: a wrong argument to a task's `delay` or
`adelay` is a type error in the user's editor. Each wrong call carries the ignore it needs; with
warn_unused_ignores, a call that stopped being an error fails the check."""

from __future__ import annotations

from streamtasks import App, AsyncResult

app = App("typing", url="memory://typing")


@app.task
def place_order(order_id: str, qty: int, *, express: bool = False) -> dict[str, str]:
    return {"order": order_id}


def sync_producer() -> None:
    ok: AsyncResult[dict[str, str]] = place_order.delay("o-1", 2, express=True)
    value: dict[str, str] = ok.get(timeout=1)
    place_order.delay("o-1", "2")  # type: ignore[arg-type]
    place_order.delay("o-1")  # type: ignore[call-arg]
    place_order.delay("o-1", 2, rush=True)  # type: ignore[call-arg]
    wrong: AsyncResult[int] = place_order.delay("o-1", 2)  # type: ignore[assignment]
    print(value, wrong)


async def async_producer() -> None:
    ok = await place_order.adelay("o-1", 2)
    value: dict[str, str] = await ok.aget(timeout=1)
    await place_order.adelay(1, 2)  # type: ignore[arg-type]
    await place_order.adelay("o-1", 2, rush=True)  # type: ignore[call-arg]
    print(value)
