"""Training engines other than the native single-process loop (`sspo_cli.trainer`).

`engine: trl` runs a recipe on Hugging Face TRL's `GRPOTrainer` (multi-GPU and multi-node with
`accelerate launch`, DeepSpeed ZeRO, FSDP, vLLM sampling) with our objectives, advantages and
records. Nothing here imports torch or TRL at import time: `sspo validate` stays instant and a
machine without the `trl` extra gets a clear error only when it asks for that engine.
"""
