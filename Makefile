# Two entry points (see README): `make demo` and `make test`.  Both create the virtual
# environment first.  torch: `TORCH_SPEC` is installed from pip's index (`TORCH_INDEX` picks
# another, e.g. PyTorch's CPU-only wheel index); `make setup TORCH_SPEC=` keeps the torch already
# in .venv (your own CUDA build) and then applies no torch pin.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet $(if $(TORCH_SPEC),-c constraints.txt) -e ".[test]"
	touch $@

demo: setup
	$(BIN)/snakemake --cores all --profile profiles/default

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake
