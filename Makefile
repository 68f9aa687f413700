# Two doors for a new user: `make demo` runs the main job on the embedded sample, `make test` runs
# the tests. Both create their own virtualenv first. It lives outside the checkout, keyed by the
# requirement files, so fresh clones (and CI) reuse it instead of reinstalling ~3 GB of wheels.
SHELL := /bin/bash
PYTHON ?= python3
REQS_HASH := $(shell cat requirements.txt requirements-test.txt | sha1sum | cut -c1-12)
VENV ?= $(HOME)/.cache/noisy-student/venv-$(REQS_HASH)
PY := $(VENV)/bin/python
OUT ?= out/demo
PYTEST_ARGS ?=
# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) hides the useful output.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test test-fast bench clean replicate replicate-quick

venv: $(VENV)/.installed

# No file prerequisites: the venv path already changes whenever the requirement files do.
$(VENV)/.installed:
	@echo "Setting up the virtualenv in $(VENV) (first time only; a few minutes)..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

demo: venv
	$(PY) -m beam_jobs.demo --output_dir=$(OUT)

# The whole Noisy Student loop on Fashion-MNIST (sudo apt-get install dataset-fashion-mnist).
replicate: venv
	$(PY) -m beam_jobs.iterate --config=ns_train/configs/fashion_mnist_loop.py \
		--workdir=out/replicate $(ARGS)

# The same loop, tiny (the config's runlocal variant): a smoke test in a few minutes.
replicate-quick: venv
	$(PY) -m beam_jobs.iterate --config=ns_train/configs/fashion_mnist_loop.py:runlocal \
		--workdir=out/replicate-quick $(ARGS)

# Test files run side by side on up to TEST_WORKERS processes (pytest-xdist; `auto` = one per
# core, at most 4: each process loads TensorFlow). One file stays on one process, so a file's
# module fixtures are built once; TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --maxprocesses=4 --dist loadfile)
test: venv
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The pure-Python selection math, schema, stats and settings, in well under a minute: what to run
# while editing them. `make test` runs everything.
FAST_TESTS := tests/ns_data/test_balance.py tests/ns_data/test_select.py \
	tests/ns_data/test_predictions.py tests/ns_data/test_stats.py tests/ns_data/test_schema.py \
	tests/ns_data/test_completion.py tests/ns_data/test_tfrecord.py tests/ns_data/test_progress.py \
	tests/ns_train/test_config.py tests/ns_train/test_optim.py
test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS) $(FAST_TESTS)

# Each bench prints ratios measured side by side in one run; BENCHMARKS.md holds their output.
# bench.end_to_end needs Debian's dataset-fashion-mnist.
bench: venv
	$(PY) -m bench.byte_passes
	$(PY) -m bench.selection
	$(PY) -m bench.end_to_end
	$(PY) -m bench.balance_memory
	$(PY) -m bench.input_pipeline
	$(PY) -m bench.decode
	$(PY) -m bench.teacher
	$(PY) -m bench.overhead
	$(PY) -m bench.split_read
	$(PY) -m bench.bad_inputs

clean:
	rm -rf out .pytest_cache
