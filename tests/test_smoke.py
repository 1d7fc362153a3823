from streamtasks import App


def test_a_task_round_trips_through_a_real_redis(redis_app: App) -> None:
    @redis_app.task
    def double(x: int) -> int:
        return 2 * x

    result = double.delay(21)
    redis_app.Worker().drain(timeout=10)
    assert result.get(timeout=1) == 42
