"""`soundnet-fast inspect` over a folder of parts: the parts, the missing and unfinished ones, those made otherwise."""

from __future__ import annotations

import argparse
import json
import shutil

from soundnet_fast.data import inspect as shardinfo
from soundnet_fast.data.shards import MANIFEST
from tests.data.parts_helpers import write_parts


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    shardinfo.add_arguments(parser)
    return shardinfo.run(parser.parse_args([*argv, "--clips", "2"]))


def test_inspect_lists_parts_missing_unfinished_and_disagreeing(tmp_path, capsys):
    write_parts(tmp_path / "d", 3)
    s = shardinfo.summarize_shards(tmp_path / "d", clips=4)
    assert s["manifest"]["num_clips"] == s["index_clips"] == 21 and s["manifest"]["num_videos"] == 7
    assert [p["part"] for p in s["parts"]] == [(0, 3), (1, 3), (2, 3)] and all(p["complete"] for p in s["parts"])
    assert not s["missing"] and not s["unfinished"] and not s["problems"] and len(s["samples"]) == 4
    assert _run(str(tmp_path / "d")) == 0
    out = capsys.readouterr().out
    assert "21 clips" in out and "3 parts" in out and "part-00002-of-00003" in out
    # Part 1 gone, part 2 still being prepared, and (in another folder) a part with other settings.
    shutil.rmtree(tmp_path / "d" / "part-00001-of-00003")
    m = json.loads((tmp_path / "d" / "part-00002-of-00003" / MANIFEST).read_text())
    (tmp_path / "d" / "part-00002-of-00003" / MANIFEST).write_text(json.dumps({**m, "complete": False}))
    write_parts(tmp_path / "e", 3, only=[1], extra={"mono": "mean"})
    s = shardinfo.summarize_shards(tmp_path / "d")
    assert s["missing"] == [str(tmp_path / "d" / "part-00001-of-00003")]
    assert s["unfinished"] == [str(tmp_path / "d" / "part-00002-of-00003")]
    assert _run(str(tmp_path / "d"), str(tmp_path / "e")) == 1
    out = capsys.readouterr().out
    assert "unfinished parts (1)" in out and "mono = 'mean'" in out and "missing" not in out  # part 1 is in e
