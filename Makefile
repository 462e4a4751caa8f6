# Two entry points, each setting up its own virtual environment first:
#   make demo   runs the main job on the embedded default config (synthetic world)
#   make test   runs the test suite
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdir/default
PY := $(VENV)/bin/python

.PHONY: demo test test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,torch-parity]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m tads_jax.main --config configs/default.py --workdir $(WORKDIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Includes the tests marked slow (full-size parity, the notebook, report.html in headless
# Chromium, which comes from Debian's packages: installed here when missing, as root).
test-all: $(VENV)/.installed
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) workdir
