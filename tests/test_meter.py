"""The step meter: what one StepEvent reports about the steps since the last one."""

import pytest

from pefttool import meter as meter_mod
from pefttool.meter import StepMeter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(meter_mod.time, "perf_counter", fake)
    return fake


def test_a_window_reports_the_mean_step_loss_over_the_micro_batches_each_step_had(clock):
    m = StepMeter()
    m.add_batch(1.0, tokens=10, samples=2)
    m.add_batch(3.0, tokens=6, samples=2)
    m.end_step()                        # a full step: mean 2.0
    m.add_batch(5.0, tokens=4, samples=1)
    m.end_step()                        # an epoch's short last step: one micro-batch, 5.0
    clock.now += 2.0
    w = m.close_window()
    assert (w.steps, w.tokens, w.samples) == (2, 20, 5)
    assert w.mean_loss == pytest.approx(3.5)
    assert w.tokens_per_s == pytest.approx(10.0)
    assert w.samples_per_s == pytest.approx(2.5)
    assert w.sec_per_step == pytest.approx(1.0)


def test_evaluation_and_checkpoint_pauses_are_not_training_time(clock):
    m = StepMeter()
    m.add_batch(1.0, tokens=8, samples=1)
    m.end_step()
    clock.now += 10.0
    m.pause(6.0)                        # an evaluation inside the window
    w = m.close_window()
    assert w.seconds == pytest.approx(4.0)
    assert w.tokens_per_s == pytest.approx(2.0)


def test_a_new_window_starts_empty_and_the_speed_estimate_is_smoothed(clock):
    m = StepMeter()
    m.add_batch(1.0, tokens=8, samples=1)
    m.end_step()
    clock.now += 1.0
    m.close_window()
    assert m.sec_per_step == pytest.approx(1.0)
    m.start_window()
    m.add_batch(2.0, tokens=2, samples=1)
    m.end_step()
    clock.now += 2.0
    w = m.close_window()
    assert (w.steps, w.tokens, w.mean_loss) == (1, 2, pytest.approx(2.0))
    assert m.sec_per_step == pytest.approx(0.7 * 1.0 + 0.3 * 2.0)


def test_totals_over_processes_keep_the_window_time(clock):
    m = StepMeter()
    m.add_batch(1.0, tokens=8, samples=2)
    m.end_step()
    clock.now += 2.0
    w = m.close_window().with_totals(loss=1.5, tokens=16, samples=4)
    assert (w.seconds, w.tokens_per_s, w.samples_per_s) == (pytest.approx(2.0), 8.0, 2.0)
