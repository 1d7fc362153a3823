"""A call the task function cannot take is refused at `.delay()`, as calling it would be, and
nothing is enqueued; a task defined in the script being run is warned about at registration."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from streamtasks import App, ConfigurationError
from tests.unit.support import delayed_len, stream_len


def test_a_missing_argument_raises_type_error_at_delay_naming_the_task(memory_app: App) -> None:
    @memory_app.task(name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"shop\.add: add\(\) missing 1 required .*'y'"):
        add.delay(1)  # type: ignore[call-arg]
    assert stream_len(memory_app) == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "complaint"),
    [
        ((1, 2, 3), {}, "takes 2 positional arguments but 3 were given"),
        ((1,), {"z": 2}, "unexpected keyword argument 'z'"),
        ((1, 2), {"x": 1}, "multiple values for argument 'x'"),
    ],
)
def test_every_enqueue_path_checks_the_call(
    memory_app: App, args: tuple[int, ...], kwargs: dict[str, int], complaint: str
) -> None:
    add = memory_app.task(name="add")(lambda x, y: x + y)
    with pytest.raises(TypeError, match=complaint):
        add.apply_async(args, kwargs)
    with pytest.raises(TypeError, match=complaint):
        add.apply_async(args, kwargs, countdown=30)
    with pytest.raises(TypeError, match=complaint):
        add.apply_async(args, kwargs, idempotency_key="k")
    assert (stream_len(memory_app), delayed_len(memory_app)) == (0, 0)
    assert not memory_app.broker.client.exists(memory_app.keys("default").idempotency("k"))


def test_map_refuses_the_whole_batch_when_one_call_is_wrong(memory_app: App) -> None:
    square = memory_app.task(name="square")(lambda x: x * x)
    pair = memory_app.task(name="pair")(lambda a, b: a + b)
    with pytest.raises(TypeError, match="square"):
        square.starmap([(1,), (2,), (3, 4)])
    with pytest.raises(TypeError, match="pair"):
        pair.map([1, 2])
    assert stream_len(memory_app) == 0


def test_defaults_keyword_only_and_variadic_parameters_are_honoured(memory_app: App) -> None:
    @memory_app.task(name="ship")
    def ship(order_id: str, /, carrier: str = "dhl", *items: str, express: bool, **notes: str):
        return [order_id, carrier, list(items), express, notes]

    ship.delay("o-1", express=True)
    ship.delay("o-1", "ups", "a", "b", express=False, gift="yes")
    with pytest.raises(TypeError, match="keyword-only argument: 'express'"):
        ship.delay("o-1")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'order_id'"):
        ship.delay(order_id="o-1", express=True)  # type: ignore[call-arg]
    assert stream_len(memory_app) == 2


def test_a_task_defined_in_main_warns_with_the_fix(tmp_path: Path) -> None:
    script = tmp_path / "shop.py"
    script.write_text(
        "from streamtasks import App\n"
        "app = App('shop', url='memory://')\n"
        "@app.task\n"
        "def place_order(order_id): ...\n"
        "@app.task(name='shop.refund')\n"
        "def refund(order_id): ...\n"
    )
    ran = subprocess.run(
        [sys.executable, "-W", "default", str(script)], capture_output=True, text=True, check=True
    )
    [warning] = [line for line in ran.stderr.splitlines() if "Warning" in line]
    assert "'__main__.place_order' is defined in the script being run" in warning
    assert "Define tasks in a module the worker imports" in warning
    assert "shop.refund" not in ran.stderr, "a named task is found by its name wherever it lives"


def test_partials_and_callable_objects_register_and_are_checked(memory_app: App) -> None:
    def charge(currency: str, order_id: str, cents: int) -> str:
        return f"{order_id}:{cents}{currency}"

    class Refund:
        def __call__(self, order_id: str) -> str:
            return order_id

    in_euros = memory_app.task(name="charge_eur")(functools.partial(charge, "EUR"))
    refund = memory_app.task(name="refund")(Refund())
    result = in_euros.delay("o-1", 500)
    refund.delay("o-1")
    with pytest.raises(TypeError, match=r"charge_eur: .*missing 1 required positional argument"):
        in_euros.delay("o-1")
    with pytest.raises(TypeError, match=r"refund: .*takes 1 positional argument but 2"):
        refund.delay("o-1", "o-2")
    memory_app.Worker().drain(timeout=5)
    assert result.get(timeout=0) == "o-1:500EUR"


def test_a_partial_without_a_name_is_refused_asking_for_one(memory_app: App) -> None:
    with pytest.raises(ConfigurationError, match=r"give one, @app.task\(name=\.\.\.\)"):
        memory_app.task(functools.partial(print, "x"))
