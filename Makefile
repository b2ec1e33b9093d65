# The README's commands: `make run`, `make test` and `make reliability`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
#: pytest-xdist processes; most tests wait (on group joins, subprocesses, deadlines), so CI runs more than its 2 cores.
#: 0, no xdist, by default: on a machine already busy, parallel starts of brokers and workers miss their deadlines.
JOBS ?= 0

.PHONY: run test reliability ci lint types install clean

# uv fetches and installs in parallel: a clean install takes a fraction of pip's time.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy shared producer consumer tests benchmarks

## run: the main job: the embedded broker, two workers and a stand-in fleet run one remote batch of 1,000 tasks
run: $(STAMP)
	$(BIN)/trs dev demo --tasks 1000 --workers 2

## test: lint, types and every suite but the reliability one (integration tests start their own broker)
test: lint types
	$(BIN)/pytest --ignore=tests/reliability -m 'not alone' -n $(JOBS) --dist loadscope
	$(BIN)/pytest --ignore=tests/reliability -m alone

## reliability: the fault, hostile-input and soak scenarios, each printing its figures as a RELIABILITY line.
## The scenarios marked `alone` measure time or memory: they run afterwards, one at a time, with nothing beside them.
reliability: $(STAMP)
	$(BIN)/pytest tests/reliability -m 'not alone' -n $(JOBS) --dist loadscope
	$(BIN)/pytest tests/reliability -m alone -s

## ci: what .ci/run runs: `make test` and `make reliability` with every parallel part in one pytest, so that
## its broker, target and workers start once
ci: lint types
	$(BIN)/pytest -m 'not alone' -n $(JOBS) --dist loadscope
	$(BIN)/pytest -m alone -s

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
