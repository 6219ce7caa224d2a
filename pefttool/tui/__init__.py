"""The terminal UI: a consumer of `events.jsonl` that runs training in a child process.

Nothing outside this package imports textual; `make_app()` in `app.py` builds the app for the
CLI and the tests alike.
"""
