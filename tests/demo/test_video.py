"""soundnet_fast/demo/video.py: the world's MP4s are the same bytes on every run (a demo table depends on it)."""

from __future__ import annotations

import hashlib

from soundnet_fast.demo import video


def test_the_same_video_is_written_as_the_same_bytes(tmp_path):
    # Video 1 of world seed 0 as the demo plans it (8 segments of 3 s at 4 fps). With libx264's mbtree on, its 10
    # encodes here gave 4-8 different files; the frames and the audio were the same every time.
    plan = video.plan_video(0, 1, 8, 3.0, 0.08, 4)
    frames, audio = video.video_content(plan, 1)
    digests = set()
    for i in range(6):
        path = tmp_path / f"v{i}.mp4"
        video.write_mp4(str(path), frames, audio, plan.fps)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1, f"{len(digests)} different files from 6 encodes of the same frames"
