"""The network-agnostic diffusion training core.

* :mod:`.task`      — ``TrainTask``: the one place a trained network plugs in
* :mod:`.loop`      — ``TrainingLoop``: plan, micro-batches, optimizer, EMA, autocast, DDP/FSDP, checkpoints, logs
* :mod:`.settings`  — ``CoreConfig`` (the shared config fields), loading, the resume rule from field metadata
* :mod:`.resume`    — which checkpoint a run starts from, and whether the config may continue it
* :mod:`.optim`     — AdamW + warm-up + constant / cosine schedule
* :mod:`.parallel`  — DDP / FSDP wrapping and full state dicts
* :mod:`.logs`      — ``train_log.jsonl`` and TensorBoard
* :mod:`.tensorfile` — byte-reproducible safetensors files and their completeness check
"""
