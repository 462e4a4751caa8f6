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

# One pytest process: two workers (pytest-xdist) ran 1.2x faster on 2 cores, but one of
# them crashed in an 8-device test while the other ran, and xdist then hung (BENCHMARKS.md,
# "Test suite and CI time").
test: $(VENV)/.installed
	$(PY) -m pytest -q

# Includes the tests marked slow (full-size parity, the notebook, report.html in headless
# Chromium, which comes from Debian's packages: installed here when missing, as root).
test-all: $(VENV)/.installed
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) workdir
