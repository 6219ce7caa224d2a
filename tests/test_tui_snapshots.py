"""Snapshots of the main screens at 100×30 (pytest-textual-snapshot).

Deterministic by construction: canned run folders with fixed times and values, a fixed
time zone, an empty current folder (only the built-in recipes), no live process.
Update after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the SVGs in tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.widgets import Input

from pefttool.tui.app import make_app
from test_tui_support import write_canned_run

SIZE = (100, 30)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """An empty working folder with canned runs under runs/, in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    # Recipes resolve relative paths against the process's folder too: run from the empty one,
    # so files a developer made in the checkout (`make chat-data`'s build/) cannot change a shot.
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    write_canned_run(runs, "lora-20250101-000000")
    write_canned_run(runs, "full-20250102-000000", status="failed", t0=1_735_800_000.0)
    crashed = write_canned_run(runs, "qlora-20250103-000000", upto=24, pid=999_999_999,
                               t0=1_735_900_000.0)
    (crashed / "stderr.log").write_text(
        "Traceback (most recent call last):\n  File \"pefttool/engine.py\", line 312, in train\n"
        "torch.OutOfMemoryError: CPU out of memory. Tried to allocate 2.00 GiB\n")
    yield tmp_path
    monkeypatch.delenv("TZ")
    time.tzset()


def app_in(place: Path, **kwargs):
    return make_app(runs_root=Path("runs"), cwd=place, estimate_plans=False, **kwargs)


async def settle(pilot, footer_shows: str = "Quit") -> None:
    """Workers done, and the footer redrawn for the focused widget (it redraws after a
    refresh, so a screenshot could otherwise catch the previous footer)."""
    from textual.widgets import Footer
    from textual.widgets._footer import FooterKey

    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    for _ in range(100):
        shown = {key.description for key in pilot.app.screen.query_one(Footer).query(FooterKey)}
        if footer_shows in shown:
            return
        await pilot.pause(0.02)
    raise AssertionError(f"the footer never showed {footer_shows!r}: {shown}")


def test_recipes_screen(snap_compare, place):
    async def ready(pilot):
        await settle(pilot)
        pilot.app.screen.select_recipe("lora")
        await settle(pilot, footer_shows="Adjust")

    assert snap_compare(app_in(place), terminal_size=SIZE, run_before=ready)


def test_adjust_screen_with_a_problem_inline(snap_compare, place):
    async def ready(pilot):
        await settle(pilot)
        pilot.app.screen.select_recipe("lora")
        await pilot.press("enter")
        await settle(pilot)
        lr = pilot.app.screen.query_one("#f-train--lr", Input)
        lr.value = "0"
        lr.cursor_blink = False
        lr.focus()
        await settle(pilot, footer_shows="Launch")

    assert snap_compare(app_in(place), terminal_size=SIZE, run_before=ready)


def test_plugins_screen(snap_compare, place):
    async def ready(pilot):
        await pilot.press("3")
        await settle(pilot, footer_shows="Reload")

    assert snap_compare(app_in(place), terminal_size=SIZE, run_before=ready)


def test_runs_screen(snap_compare, place):
    async def ready(pilot):
        await pilot.press("2")
        await settle(pilot, footer_shows="Open")

    assert snap_compare(app_in(place), terminal_size=SIZE, run_before=ready)


async def dashboard_ready(pilot):
    await settle(pilot, footer_shows="Back")


def test_dashboard_of_a_finished_run(snap_compare, place):
    app = app_in(place, attach=place / "runs" / "lora-20250101-000000")
    assert snap_compare(app, terminal_size=SIZE, run_before=dashboard_ready)


def test_dashboard_of_a_crashed_run(snap_compare, place):
    app = app_in(place, attach=place / "runs" / "qlora-20250103-000000")
    assert snap_compare(app, terminal_size=SIZE, run_before=dashboard_ready)
