"""The MLflow tracker's threads: the training thread and the reader of the side process's
replies share a run's state under a lock, in the order ``MlflowRun``'s docstring states, and a
run detached from the side process gets no reply any more. Real side processes, real stores."""

import threading
import time

import pytest

import lossbench
from lossbench.process import one_blas_thread
from lossbench.tracking.client import SideProcess
from lossbench.tracking.mlflow_run import MlflowRun

pytestmark = pytest.mark.slow


@pytest.fixture
def run(pm, tmp_path):
    """A trained run (recorded once), whose config later trackers reuse."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = ["trainer.progress=false", "tracking=mlflow", f"tracking.uri={store}",
                 "data=iris", "trainer.epochs=2"]  # fmt: skip
    return lossbench.train(overrides=overrides, output_dir=tmp_path / "o")


def store_runs(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run.config.tracking.uri)
    exp = client.get_experiment_by_name(run.config.tracking.experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_a_late_reply_of_a_run_the_trainer_stopped_waiting_for_never_reaches_the_next_run(run):
    first = MlflowRun(run, run.config.tracking)
    first.log_history(run.history)
    first.send_finish(run, "finished", [], {}, model_folder=None)
    first.side.detach(first.run_key)  # as a trainer that stopped waiting for the end
    seen = (first.state, first.run_id, dict(first.result))
    second = MlflowRun(run, run.config.tracking)  # attached before the first's replies come
    second.log_history(run.history)
    second.finish(run, "finished")
    assert second.result["complete"] and second.incomplete() is None
    runs = store_runs(run)
    assert len(runs) == 3  # the fixture's, the first's (ended by the side process), the second's
    assert second.run_id == runs[-1].info.run_id != runs[1].info.run_id
    assert all(r.info.status == "FINISHED" for r in runs)
    # the first run's replies that came after it was detached (its finished, at least)
    # reached no one: it is as the trainer left it
    assert (first.state, first.run_id, first.result) == seen and seen[2] == {}
    assert not first.finished.is_set()
    first.spool.close()


class SlowTracker:
    """Records the replies handed to it; each takes a while, so a detach comes mid-reply."""

    def __init__(self):
        self.replies, self.inside, self.entered = [], False, threading.Event()

    def on_reply(self, reply):
        self.inside = True
        self.entered.set()
        time.sleep(0.3)
        self.replies.append(reply)
        self.inside = False


def test_detach_waits_for_a_reply_being_handed_over_and_no_reply_comes_after_it(run, tmp_path):
    side = SideProcess()
    try:
        unsent = MlflowRun(run, run.config.tracking, begin=False)  # for a valid start request
        unsent.spool.close()
        request = dict(unsent.start_request)
        request["spool_dir"] = None
        tracker = SlowTracker()
        side.attach(request["spool_id"], tracker)
        assert side.send(**request) is None
        assert tracker.entered.wait(timeout=60), side.died()
        side.detach(request["spool_id"])  # while the reader is inside on_reply
        assert not tracker.inside and [r["op"] for r in tracker.replies] == ["started"]
        assert side.send(op="finish", state="FINISHED", tags={}, metrics=[], artifacts=[],
                         model=None) is None  # fmt: skip
        # the side process serves runs in order: once a next run has started, the first
        # run's finished reply has been read, and handed to no one
        after = SlowTracker()
        side.attach("next", after)
        assert side.send(**{**request, "spool_id": "next"}) is None
        assert after.entered.wait(timeout=60), side.died()
        assert [r["op"] for r in tracker.replies] == ["started"]
        assert side.proc.poll() is None
    finally:
        side.close()
        side.proc.wait(timeout=60)


def test_the_trainer_sees_a_runs_states_in_order_while_the_reader_writes_them(run):
    tracker = MlflowRun(run, run.config.tracking)
    seen = [tracker.state]
    done = threading.Event()

    def end_the_run():
        tracker.log_history(run.history)
        tracker.finish(run, "finished")
        done.set()

    trainer = threading.Thread(target=end_the_run)
    trainer.start()
    while not done.is_set():  # read while replies arrive: each read is one consistent state
        state = tracker.state
        if tracker.finished.is_set():
            assert tracker.result.get("complete") is True  # whole once finished is set
        if state != seen[-1]:
            seen.append(state)
    trainer.join()
    if tracker.state != seen[-1]:  # the last change may land between a read and the check
        seen.append(tracker.state)
    order = ["starting", "running", "ended"]
    assert seen == [s for s in order if s in seen] and seen[-1] == "ended"
    assert tracker.run_id == store_runs(run)[-1].info.run_id


def test_side_process_gone_mid_run_ends_the_run_with_its_reason(run):
    side = SideProcess()
    tracker = MlflowRun(run, run.config.tracking, begin=False)
    tracker.side = side
    tracker.begin()
    side.proc.kill()
    assert tracker.finished.wait(timeout=30)
    assert tracker.state == "ended"
    assert "the MLflow process ended unexpectedly" in tracker.incomplete()
    side.proc.wait(timeout=30)
    tracker.spool.close()


def test_one_blas_thread_limits_blas_on_two_cores_and_gives_it_back():
    import numpy  # noqa: F401  (loads the BLAS the limit applies to)
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert before, "no BLAS loaded"
    assert one_blas_thread(cores=4) is None and blas_threads() == before
    restore = one_blas_thread(cores=2)
    assert restore is not None and blas_threads() == [1] * len(before)
    restore()
    assert blas_threads() == before
