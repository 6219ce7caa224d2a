"""The run folder's one owner: everything pefttool writes into RUN_DIR, reads back from it, and
decides about it.

    rundir       the folder's names and layout, its marker and lock (`RunDir`), the overwrite
                 rules, statuses and exit codes, atomic file writes, why a write failed
    lifecycle    a new run claimed; an earlier one opened to resume (the checkpoint to go on
                 from, or the model/ to rebuild); the recipe saved with a run and read back
    resumable    whether a run can be resumed, and how: one answer for engine, CLI and TUI
    checkpoints  atomic, checksummed checkpoints, pruning, `TrainState`, loading one back
    model_state  what a checkpoint keeps of the model (trainable tensors + base fingerprint)
    model_dir    model/: written atomically with its manifest, damage, repair, export's copy
    results      metrics.json and samples.jsonl
    summary      events.jsonl folded into a run's state (`RunState`), the run list

The engine keeps the run's lifetime, signals and the loop; it asks here for every file. Nothing
here imports torch at module level (model_state imports it where it runs), so the CLI and the
TUI read run folders without loading it. This `__init__` imports nothing: import the module.
"""
