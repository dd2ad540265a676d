"""`soundnet-fast inspect`: the summary of a shard folder and what it prints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soundnet_fast.cli import run_command
from soundnet_fast.data.shards import FAILURES
from tests.helpers.shards import clip_arrays, write_shards


def test_inspect_summarizes_and_prints(tmp_path, capsys):
    import argparse

    from soundnet_fast.data import inspect as shardinfo

    write_shards(tmp_path)
    (tmp_path / FAILURES).write_text(json.dumps({"video": "x.mp4", "reason": "x.mp4: empty", "kind": "empty"}) + "\n")
    s = shardinfo.summarize_shards(tmp_path, clips=2, top=2)
    assert s["index_clips"] == 21 and s["num_shards"] == 4 and s["failures"] == {"empty": 1}
    assert len(s["samples"]) == 2
    clip = s["samples"][0]
    _, probs = clip_arrays(clip["clip"])
    best = int(np.argmax(probs["objects"][0]))
    assert clip["teachers"]["objects"][0][0] == (f"o{best}", pytest.approx(float(probs["objects"][0, best])))
    assert clip["teachers"]["scenes"][0][0][0].startswith("#")  # no class names: indices
    parser = argparse.ArgumentParser()
    shardinfo.add_arguments(parser)
    assert shardinfo.run(parser.parse_args([str(tmp_path), "--clips", "1"])) == 0
    out = capsys.readouterr().out
    assert "21 clips" in out and "7 videos" in out and "empty: 1" in out and "teacher objects: 5 classes" in out
    assert run_command("inspect", shardinfo.run, parser.parse_args([str(tmp_path / "nowhere")])) == 2
    assert capsys.readouterr().err.startswith(f"soundnet-fast inspect: error: {tmp_path / 'nowhere'}")
