"""Shards -> checkpoint: ``config`` (options, their command line and resolution), ``trainer`` (the run, top to
bottom), ``step`` (forward, loss, backward, Adam on the device; CUDA graphs), ``distributed`` (DDP, sync-BN, signals),
``log`` (metrics, TensorBoard), ``losses`` (the distillation KL), ``checkpoint`` (atomic save and exact resume).
``python -m soundnet_fast.train`` and ``torchrun -m soundnet_fast.train`` run the trainer."""
