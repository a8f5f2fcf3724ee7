PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test example bench fuzz lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

example: $(STAMP)
	$(PY) examples/seed_walkthrough.py

bench: $(STAMP)
	$(PY) benchmarks/compare.py

lint: $(STAMP)
	$(PY) -m ruff check finetune tests examples benchmarks
	$(PY) -m ruff format --check finetune tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
