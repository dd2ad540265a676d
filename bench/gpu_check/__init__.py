"""GPU check of the fused kernels, made to run once, unattended, on a lent bare GPU machine.

    python -m bench.gpu_check [--out DIR] [--budget 450] [--smoke]

Needs only PyTorch and Triton (>= 3.6) on a CUDA machine: no DALI, PyAV, pytest or install of the project (the
checkout is imported as it is, :mod:`bench.gpu_check.common`). Exit status 0 when every check passed, 1 on any
failure, 2 without CUDA (unless ``--smoke``).

Design, for a run that has no second try:

- **One process per section.** The parent (:mod:`~bench.gpu_check.runner`) starts
  ``python -m bench.gpu_check --section NAME`` for each section in turn, each with its own timeout. A hang, a
  crash or a CUDA error in one section costs that section only: on a timeout the parent kills the section's process
  group, records "timed out after N s" and moves on.
- **JSON lines, written as measured.** Each section appends records to ``NN-<name>.jsonl`` in the output folder,
  one JSON object per line, flushed and fsync'd after each (:mod:`~bench.gpu_check.records`), so killing a section
  or the parent keeps everything measured so far. The parent records the plan and each outcome in ``run.jsonl``
  and renders ``report.md`` from all records after every section and at the end (section logs: ``logs/``).
- **A budget.** The parent has a hard budget (``--budget``, 450 s). Each section has an estimate at full size and
  a timeout (:mod:`~bench.gpu_check.plan`; the report prints the table). Mandatory sections 0-5 add up to ~340 s;
  optional sections (6) run only while their estimate fits what is left and are otherwise recorded as "skipped:
  budget"; no timeout reaches past the budget.
- **One Triton cache.** ``TRITON_CACHE_DIR`` is set for the whole run (a fresh temporary folder unless already set):
  section 1 compiles every bf16 training specialisation in a process pool, later sections load them from disk.

Sections (full size: batch 64 of 20 s clips, bf16, training, SoundNet-8):

0. environment: device, SM count, L2, clocks, power limit, other GPU processes, versions, git commit, date, and
   that the checkout imports without av / DALI / librosa / sklearn.
1. precompile: the bf16 training launches (recorded on meta tensors with ``bench/aot_check.py``'s recorder),
   compiled per distinct specialisation in a process pool; seconds, registers, spills, shared memory.
2. parity: each SoundNet-8 block in bf16 at full size, fused vs eager vs a float64 reference; PASS when the fused
   op's error is at most twice eager's.
3. throughput: clips/s of the trunk forward + backward and of the product's own train step
   (``train.step.Stepper``, SoundNet8, KL loss, fused Adam): eager (cuDNN benchmark), fused, fused + CUDA
   graphs, in A/B/A order with the SM clock before and after; the CUDA-graph capture checks of the KL loss and
   of a conv training step. 3b (compile): torch.compile of the ops and of the train step, compile time reported.
4. kernels: ``triton.testing.do_bench`` of every launch of section 1 (L2 flushed before each call), TFLOP/s,
   GB/s, registers / spills, beside ``bench/sass_report.py``'s static prediction and the warp-IPC it implies.
5. ncu: Nsight Compute on up to 6 kernels (instructions per pipe, L2 / DRAM bytes, stall reasons), if it works.
6. optional: fp32 parity under a TF32-robust rule and IEEE fp32, deterministic backward run-to-run bitwise,
   ``torch.library.opcheck`` on CUDA, eval parity, SoundNet-5 clips/s, VGG16 teacher frames/s, torch.compile
   at a second batch size.

``--smoke`` runs all of it on the CPU under ``TRITON_INTERPRET=1`` at toy sizes (CUDA-only parts record "skipped:
no CUDA"), to check the script itself (tests/kernels/test_gpu_check.py); its output goes to a temporary folder
unless ``--out`` is given. ``--sections a,b`` runs a subset and ``--section-timeout NAME=S`` overrides one timeout
(the tests use it to force an overrun). Without a GPU, ``python -m bench.aot_check`` compiles
every kernel specialisation for sm_90.
"""
