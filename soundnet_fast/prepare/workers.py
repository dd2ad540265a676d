"""The decoding processes of ``soundnet-fast prepare``: one job decodes one video and cuts its clips.

A job is ``(video id, path, options)``; its result is a record: ``ok`` with clips (and frames, or the frame
indices DALI decodes later), or a failure with its ``kind`` and ``reason``. A failure never raises, so one bad
video never stops the run (docs/design.md#data-path).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from soundnet_fast.prepare.video import VideoError, decode, make_clips

Job = tuple[str, str, dict[str, Any]]  # (video id, path, options)


def decode_job(job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """In a worker process: decode one video and cut its clips; failures come back as records, never as exceptions.

    With ``opts["frame_decoder"] == "dali"`` the video is only demuxed: the result carries, per used
    window, the frame's index for DALI (``indices``) instead of the frame. With ``opts["audio_decoder"] ==
    "dali"`` the audio was decoded by DALI and only the video stream is read
    (:func:`soundnet_fast.prepare.audio_dali_jobs.video_job`)."""
    vid, path, opts = job
    t0 = time.perf_counter()
    try:
        if opts.get("audio_decoder") == "dali":  # the audio came from DALI: the video stream alone
            from soundnet_fast.prepare.audio_dali_jobs import video_job

            return video_job(vid, path, opts)
        dali = opts["need_frames"] and opts["frame_decoder"] == "dali"
        dec = decode(
            path,
            sample_rate=opts["sample_rate"],
            frame_every=opts["frame_every"],
            mono=opts["mono"],
            need_frames=opts["need_frames"],
            decode_frames=not dali,
        )
        clips = make_clips(
            dec, clip_seconds=opts["clip_seconds"], frame_every=opts["frame_every"], sample_rate=opts["sample_rate"]
        )
        used = sorted({w for c in clips for w in c.windows})
        frames = {w: dec.frames[w] for w in used} if dec.frames else {}
        res = {
            "video": vid,
            "ok": True,
            "clips": clips,
            "frames": frames,
            "duration": dec.duration,
            "seconds": time.perf_counter() - t0,
        }
        if opts["need_frames"]:
            res["frame_decoder"] = "pyav"
        if dali:
            res.update(indices={w: dec.frame_indices[w] for w in used}, frame_size=dec.frame_size,
                       codec=dec.video_codec, frame_decoder="dali")  # fmt: skip
        return res
    except VideoError as e:
        return {"video": vid, "ok": False, "kind": e.kind, "reason": str(e)}
    except Exception as e:  # anything else is still this video's failure, not the run's
        return {"video": vid, "ok": False, "kind": "error", "reason": f"{path}: {type(e).__name__}: {e}"}


class Workers:
    """Decoding processes; results come back in input order with a bounded number in flight.

    fork, not spawn: spawn re-imports the caller's ``__main__`` (a script without the ``if __name__`` guard
    would fail), and the workers only use PyAV, soxr and numpy, never torch. The pool is started before any
    teacher is built or run, so the forked parent holds no torch thread pool or CUDA context yet.
    A worker that dies (an FFmpeg crash on a hostile file) breaks the pool: the jobs in flight are then rerun
    one at a time in fresh single-worker pools, so only the video that crashes again is recorded as failed.
    """

    def __init__(self, workers: int, *, start: bool = True) -> None:
        """``start=False``: fork the processes on first use instead (a run that never needs them, such as an
        audio-only prepare whose soundtracks DALI decodes, then holds none). Only safe when nothing that must
        not be forked (a torch model, DALI's threads) exists before that first use."""
        self.workers = workers
        self.pool = self._new(workers) if workers > 1 and start else None
        self._pending_start = workers > 1 and not start

    def start(self) -> None:
        """Fork the processes now if ``start=False`` deferred them (no-op otherwise)."""
        self._ensure()

    def _ensure(self) -> None:
        if self._pending_start:
            self._pending_start = False
            self.pool = self._new(self.workers)

    @staticmethod
    def _new(workers: int) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ProcessPoolExecutor(workers, mp_context=ctx)
        pool.submit(int).result()  # with fork, the first submit starts every worker
        return pool

    def results(self, jobs: list[tuple[str, str, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        from concurrent.futures.process import BrokenProcessPool

        self._ensure()
        if self.pool is None:
            yield from map(decode_job, jobs)
            return
        it = iter(jobs)
        pending: list[tuple[Any, Any]] = []
        while True:
            while len(pending) < 2 * self.workers and (job := next(it, None)) is not None:
                pending.append((job, self.pool.submit(decode_job, job)))
            if not pending:
                return
            job, fut = pending.pop(0)
            try:
                res = fut.result()
            except BrokenProcessPool:
                self.pool.shutdown(wait=False, cancel_futures=True)
                for retry in [job] + [j for j, _ in pending]:
                    yield self._isolated(retry)
                pending = []
                self.pool = self._new(self.workers)
                continue
            yield res

    def run_one(self, job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
        """One job outside the ordered stream (a DALI fallback), in the pool when there is one. If it breaks
        the pool, the job is rerun alone; :meth:`results` then reruns its own jobs in flight and renews it."""
        from concurrent.futures.process import BrokenProcessPool

        self._ensure()
        if self.pool is None:
            return decode_job(job)
        try:
            return self.pool.submit(decode_job, job).result()
        except BrokenProcessPool:
            return self._isolated(job)

    def _isolated(self, job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
        from concurrent.futures.process import BrokenProcessPool

        solo = self._new(1)
        try:
            return solo.submit(decode_job, job).result()
        except BrokenProcessPool:
            return {"video": job[0], "ok": False, "kind": "crash", "reason": f"{job[1]}: the decoder crashed"}
        finally:
            solo.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pending_start = False
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


__all__ = ["Job", "Workers", "decode_job"]
