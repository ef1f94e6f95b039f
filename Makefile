# Set-up and everyday tasks. `make book` and `make test` work on a fresh clone.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

# Course data: a mirror folder with the layout of the data registry is used before the network.
# A copy beside the clone (../shared/data) is picked up automatically.
ifeq ($(LLMCOURSE_DATA_MIRROR),)
ifneq ($(wildcard ../shared/data),)
export LLMCOURSE_DATA_MIRROR := $(abspath ../shared/data)
endif
endif

.PHONY: book test lint data clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

data: $(BIN)/.installed
	$(BIN)/llmcourse data fetch --all

book: data
	$(BIN)/llmcourse book build --root .

lint: $(BIN)/.installed
	$(BIN)/ruff check .

# Unit and parity tests, then every chapter and solution notebook run in the fast smoke profile.
test: lint
	$(BIN)/pytest -q
	LLMCOURSE_PROFILE=smoke $(BIN)/pytest -q --nbval-lax --nbval-current-env chapters solutions

clean:
	rm -rf _build .pytest_cache
