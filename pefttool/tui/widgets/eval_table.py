"""The table of evaluation results: one row per evaluation, the best one marked (the
evaluation before training is marked "before")."""

from __future__ import annotations

from textual.widgets import DataTable

from ...runfolder.summary import RunState


class EvalTable(DataTable):
    """Step, mark (★ a new best, "before" the baseline), then every metric the engine
    reported (the ruling one first)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown = 0
        self._metrics: list[str] = []

    def show_run(self, state: RunState) -> None:
        if not state.evals:
            if not self.columns:
                self.add_columns("step", "best", "metric")
            return
        metrics = sorted({name for e in state.evals for name in e.metrics},
                         key=lambda name: (name != state.evals[-1].metric, name))
        if metrics != self._metrics:
            self.clear(columns=True)
            self._metrics = metrics
            self._shown = 0
            # The mark right after the step, so a narrow table never hides it.
            self.add_column("step")
            self.add_column("best", width=6)
            self.add_columns(*metrics)   # (the epoch is in the progress line: no column)
            self.refresh(layout=True)   # the table is as wide as its columns
        new = state.evals[self._shown:]
        for event in new:
            # The evaluation before training is the baseline: "before", never the best.
            before = getattr(event, "before", False) or event.step == 0
            cells = [str(event.step), "before" if before else "★" if event.is_best else ""]
            cells += [f"{event.metrics[m]:.4f}" if m in event.metrics else "-" for m in metrics]
            self.add_row(*cells)
        self._shown = len(state.evals)
        if new:
            self.move_cursor(row=self.row_count - 1)
