"""Training tasks: one small :class:`~cascadekit.generator.training.task.TrainTask` per trained network.

* :mod:`.stage_c` — the Stage C prior, full fine-tuning or LoRA (``cascadekit train``).
"""
