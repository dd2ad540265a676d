"""Shards -> checkpoint: ``trainer`` (config and loop), ``runtime`` (the step, CUDA graphs, distributed set-up),
``losses`` (the distillation KL), ``checkpoint`` (atomic save and exact resume).
``python -m soundnet_fast.train`` and ``torchrun -m soundnet_fast.train`` run the trainer."""
