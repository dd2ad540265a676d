"""The whole pipeline on a synthetic world small enough for a CPU: ``world`` (sounds and scenes), ``video``
(its videos), ``teachers`` (its visual teachers), ``run`` (``soundnet-fast demo``), ``report`` (the verdict)."""
