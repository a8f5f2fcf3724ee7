PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test example walkthrough bench fuzz lint docs clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

example: $(STAMP)
	$(PY) examples/demo_job.py

walkthrough: $(STAMP)
	$(PY) examples/seed_walkthrough.py

# make bench MODELS="mobilenet_v2 efficientnet_b0" (default: ResNet-18 and every model of
# benchmarks/models.py); BENCH_ARGS passes more options, e.g. BENCH_ARGS="--rounds 1 --no-docs"
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/compare.py $(if $(MODELS),--models $(MODELS)) $(BENCH_ARGS)

fuzz: $(STAMP)
	FINETUNE_FUZZ_EXAMPLES=2000 $(PY) -m pytest tests/test_fuzz_onnx.py -q

docs: $(STAMP)
	$(PY) tools/onnx_ops_doc.py

lint: $(STAMP)
	$(PY) -m ruff check finetune tests examples benchmarks tools
	$(PY) -m ruff format --check finetune tests examples benchmarks tools

clean:
	rm -rf $(VENV) build *.egg-info
