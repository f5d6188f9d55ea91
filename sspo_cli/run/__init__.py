"""The engine-neutral run layer: what every training run has, whichever engine trains it.

    state.py     the run's state types (Policy, TrainState, TrainingObserver, TooManySkips)
    folder.py    the run folder: output-dir checks, a new folder, run.json, the lock, atomic writes
    records.py   opening a run, its per-step and eval records, the summary, finishing it
    metrics.py   merging per-update metrics into a step, the summary's diagnostics (pure)
    schedule.py  the learning-rate schedule

Both engines (`sspo_cli.engines.native.loop`, `sspo_cli.engines.trl.engine`) stand on these modules; nothing
here imports an engine. Importing the package imports nothing.
"""
