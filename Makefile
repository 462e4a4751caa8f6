# Two entry points, each setting up its own virtual environment first:
#   make demo   runs the main job on the embedded default config (synthetic world)
#   make test   runs the test suite
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdir/default
PY := $(VENV)/bin/python
# glibc's allocator maps XLA:CPU's per-step temporaries (hundreds of MB) afresh on every
# step and faults on each page; these settings keep freed memory for reuse instead, which
# makes the CPU training loops 1.3-1.4x faster (BENCHMARKS.md, "Pixel proxy speed").
# Freed memory stays reserved by the process. Override with GLIBC_TUNABLES= to turn off.
# Not used for the tests: their many small programs ran 16% slower with it (one arena).
GLIBC_TUNABLES ?= glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4000000000

.PHONY: demo test test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,torch-parity]'
	touch $@

demo: $(VENV)/.installed
	GLIBC_TUNABLES=$(GLIBC_TUNABLES) $(PY) -m tads_jax.main --config configs/default.py --workdir $(WORKDIR)

# Two workers, a test file each (module fixtures are built once): XLA compiles on one
# thread, so the other core runs the other file's programs meanwhile (BENCHMARKS.md, "Test
# suite and CI time": 1.2x on 2 cores).
test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile

# Includes the tests marked slow (full-size parity, the notebook, report.html in headless
# Chromium, which comes from Debian's packages: installed here when missing, as root).
test-all: $(VENV)/.installed
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	$(PY) -m pytest -q -n 2 --dist loadfile -m ''

clean:
	rm -rf $(VENV) workdir
