# `make run`: set up .venv (once) and run the pipeline on params.yaml.
# `make test`: set up .venv (once) and run the whole test suite.
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test bench

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(INSTALLED)

# The tests also need the optional extras they exercise (Ray for gps sweep --engine ray, Stable-Baselines3 for
# benchmarks/compare_rl.py).
$(TEST_INSTALLED): $(INSTALLED)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test,ray,sb3]'
	touch $(TEST_INSTALLED)

run: $(INSTALLED)
	dvc repro

test: $(TEST_INSTALLED)
	$(PYTHON) -m pytest

bench: $(INSTALLED)
	$(PYTHON) benchmarks/run_pipeline.py
