"""Training shards: ``shards`` (the on-disk format, its reader checks and the writer), ``keys`` (clip keys),
``parts`` (which part holds a video), ``dataset`` (folders and parts read as one), ``loader`` (epochs of batches),
``mapped`` and ``gather`` (the loader's reads), ``inspect`` (the ``soundnet-fast inspect`` summary). Layout:
docs/design.md#shard-layout, #data-at-scale."""
