from workers.health import WorkerHealth


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_ready_once_the_group_was_joined():
    health = WorkerHealth("m", "db", clock=FakeClock())
    assert not health.ready()
    health.assigned([])  # joined with no partition (more replicas than partitions) is still ready
    assert health.ready() and health.partitions == []


def test_not_ready_before_the_model_and_database_are_loaded():
    health = WorkerHealth(clock=FakeClock())
    health.assigned([0, 1])
    assert not health.ready() and health.status()["model"] is None
    health.loaded("tiny@x", "tiny-db@y")
    assert health.ready() and health.status()["model"] == "tiny@x"


def test_live_fails_only_when_a_batch_is_stuck():
    clock = FakeClock()
    health = WorkerHealth("m", "db", stall_s=60, clock=clock)
    clock.now += 1000
    assert health.live()  # idle for long: not a failure
    health.batch_started(4)
    clock.now += 59
    assert health.live()
    clock.now += 2
    assert not health.live()
    health.batch_done(3, ["not_an_image"])
    assert health.live()


def test_live_fails_when_fetched_records_wait_without_progress():
    clock = FakeClock()
    health = WorkerHealth("m", "db", stall_s=60, clock=clock)
    health.backlog(True)
    clock.now += 59
    assert health.live()
    clock.now += 2
    assert not health.live()  # work waits and nothing answers it
    health.batch_started(2)
    assert health.live()  # a batch runs: judged by its own time
    health.batch_done(2, [])
    assert health.live()  # progress just now
    health.backlog(False)
    clock.now += 1000
    assert health.live()  # idle with nothing waiting is not a failure


def test_status_counts_events_labels_and_dead_letters_by_reason():
    clock = FakeClock()
    health = WorkerHealth("tiny@x", "tiny-db@y", clock=clock)
    health.assigned([0, 2])
    health.batch_started(5)
    clock.now += 2
    health.batch_done(3, ["not_an_image", "forbidden_source"], reused=2)
    status = health.status()
    assert status["counters"] == {"events_in": 5, "batches": 1, "labels_out": 3, "reused": 2}
    assert status["dead_letters"] == {"not_an_image": 1, "forbidden_source": 1}
    assert status["partitions"] == [0, 2] and status["model"] == "tiny@x" and status["ready"]
    assert status["seconds_since_progress"] == 0 and status["batch_in_flight_s"] is None
