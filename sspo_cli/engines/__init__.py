"""The engines that train a recipe, and the one module that chooses between them.

    dispatch.py   recipe.engine -> the engine; `run_training`, `resume_training`, `RunOptions`
    native/       the single-process loop: the RL step, checkpoints, the sampler lag, CPU tuning rules
    trl/          Hugging Face TRL's `GRPOTrainer` with our objectives, advantages and records

Both engines stand on the engine-neutral run layer (`sspo_cli.run`) and neither imports the other.
Nothing here imports torch or TRL at import time: `sspo validate` stays instant, and a machine
without the `trl` extra gets a clear error only when it asks for that engine.
"""
