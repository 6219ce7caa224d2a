"""What the training loop measures between two step events (a "window" of `train.log_every`
optimizer steps): the mean step loss, tokens and samples seen, and the training time, which
leaves out the pauses (evaluations, checkpoints) inside the window. No torch here: the loop
hands it plain numbers."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Window:
    """One closed window: what the next StepEvent reports."""

    loss: float      # the sum of the steps' mean losses (see `mean_loss`)
    steps: int       # optimizer steps in the window
    tokens: int
    samples: int
    seconds: float   # training time: wall time less the pauses

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.steps, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def sec_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)

    def with_totals(self, loss: float, tokens: int, samples: int) -> "Window":
        """The same window with figures summed (or averaged) over processes."""
        return replace(self, loss=loss, tokens=tokens, samples=samples)


class StepMeter:
    """Counts micro-batches into optimizer steps and steps into windows.

    Per micro-batch `add_batch`, per optimizer step `end_step`, for every evaluation or
    checkpoint `pause(seconds)`, and at each log point `close_window` then `start_window`.
    `sec_per_step` is the smoothed recent speed, for the ETA."""

    def __init__(self) -> None:
        self.sec_per_step: float | None = None
        self.start_window()

    def start_window(self) -> None:
        self._loss, self._steps, self._tokens, self._samples = 0.0, 0, 0, 0
        self._step_loss, self._step_micro = 0.0, 0
        self._paused_s = 0.0
        self._started = time.perf_counter()

    def add_batch(self, loss: float, tokens: int, samples: int) -> None:
        self._step_loss += loss
        self._step_micro += 1
        self._tokens += tokens
        self._samples += samples

    def end_step(self) -> None:
        # The mean over the micro-batches this step really accumulated: at an epoch's end
        # there can be fewer than grad_accum of them.
        self._loss += self._step_loss / max(self._step_micro, 1)
        self._step_loss, self._step_micro = 0.0, 0
        self._steps += 1

    def pause(self, seconds: float) -> None:
        """Time spent on something else than training (an evaluation, a checkpoint)."""
        self._paused_s += seconds

    def forget_speed(self) -> None:
        """Drop the smoothed speed (after a window that was not the run's pace, such as
        train.compile's compiling first step); the next window sets it afresh."""
        self.sec_per_step = None

    def close_window(self) -> Window:
        """The window so far; the clock keeps running until `start_window`."""
        seconds = max(time.perf_counter() - self._started - self._paused_s, 1e-9)
        self._paused_s = 0.0
        window = Window(loss=self._loss, steps=self._steps, tokens=self._tokens,
                        samples=self._samples, seconds=seconds)
        # Smoothed: the first steps (warm-up, denormals, caches) are not typical.
        previous = self.sec_per_step
        self.sec_per_step = (window.sec_per_step if previous is None
                             else 0.7 * previous + 0.3 * window.sec_per_step)
        return window
