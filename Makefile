# The two commands: `make test` and `make demo`. Both set up everything they need on a fresh
# Debian/Ubuntu machine: the virtualenv, the project, Mosquitto.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TYPINGS := build/typings

.PHONY: test demo firmware typecheck bench system-packages clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 found; install Python 3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "error: cannot create a virtualenv; on Debian: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

system-packages:
	@scripts/ensure-system-packages.sh

$(TYPINGS)/.installed: firmware/typecheck-requirements.txt $(STAMP)
	rm -rf $(TYPINGS)
	$(BIN)/pip install --quiet --target $(TYPINGS) -r firmware/typecheck-requirements.txt
	touch $@

test: $(STAMP) system-packages $(TYPINGS)/.installed
	$(BIN)/pytest

demo: $(STAMP) system-packages firmware
	$(BIN)/hcp-sim demo

firmware: $(STAMP) system-packages
	$(BIN)/hcp-flash build --out build/firmware

typecheck: $(TYPINGS)/.installed
	$(BIN)/basedpyright -p firmware/pyrightconfig.json

bench: $(STAMP) system-packages
	$(BIN)/python -m bench --out build/bench.json

clean:
	rm -rf build $(VENV)
