"""Training shards: ``shards`` (the on-disk format, its reader checks and the writer), ``loader`` (epochs of
batches), ``inspect`` (the ``soundnet-fast inspect`` summary). Layout: docs/design.md#shard-layout."""
