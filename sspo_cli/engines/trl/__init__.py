"""`engine: trl`: a recipe on Hugging Face TRL's `GRPOTrainer` (multi-GPU and multi-node with
`accelerate launch`, DeepSpeed ZeRO, FSDP, vLLM sampling) with our objectives, advantages and records.

    options.py   the recipe's `trl:` section (no TRL import)
    mapping.py   recipe -> GRPOConfig arguments, and the refusals for what TRL cannot do (no TRL import)
    trainer.py   the GRPOTrainer subclass whose loss is our objective
    records.py   TRL's log rows -> our metric keys
    engine.py    a run end to end on TRL, recorded like a native run
"""
