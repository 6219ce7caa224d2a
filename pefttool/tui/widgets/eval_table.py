"""The table of evaluation results: one row per evaluation, the best one marked."""

from __future__ import annotations

from textual.widgets import DataTable

from ...runs import RunState


class EvalTable(DataTable):
    """Step, epoch, then every metric the engine reported (the ruling one first); ★ marks a
    new best."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown = 0
        self._metrics: list[str] = []

    def show_run(self, state: RunState) -> None:
        if not state.evals:
            if not self.columns:
                self.add_columns("step", "epoch", "metric")
            return
        metrics = sorted({name for e in state.evals for name in e.metrics},
                         key=lambda name: (name != state.evals[-1].metric, name))
        if metrics != self._metrics:
            self.clear(columns=True)
            self._metrics = metrics
            self._shown = 0
            self.add_columns("step", "epoch", *metrics, "★")
        new = state.evals[self._shown:]
        for event in new:
            cells = [str(event.step), f"{event.epoch:.2f}"]
            cells += [f"{event.metrics[m]:.4f}" if m in event.metrics else "-" for m in metrics]
            cells.append("★" if event.is_best else "")
            self.add_row(*cells)
        self._shown = len(state.evals)
        if new:
            self.move_cursor(row=self.row_count - 1)
