# Two entry points: `make demo` and `make test`. Each creates or reuses .venv by itself.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-all bench bench-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# The CPU build of torch lies on disk; install it first so that the package's
	# "torch>=2.2" is already satisfied and pip never pulls a multi-GB CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/undiffuse demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m '' $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/core.py

# The peers for benchmarks/peers.py and benchmarks/quality_at_budget.py (never a package dependency).
bench-deps: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps denoising-diffusion-pytorch

clean:
	rm -rf $(VENV) runs .pytest_cache
