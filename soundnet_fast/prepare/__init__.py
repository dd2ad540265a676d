"""Video -> shards: ``video`` (audio and frame decoding with PyAV), ``frames_dali`` (frames on the GPU through
DALI), ``teachers`` (the visual teacher CNNs), ``workers`` (the decoding processes), ``run`` (the resumable
``soundnet-fast prepare`` run)."""
