# Two commands: `make serve` (the main job on its default config) and `make test`.
# Both create .venv on first use and install the package into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test generate bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,report,server]'
	$(PY) -m compileall -q splitjax > /dev/null
	touch $(STAMP)

serve: $(STAMP)
	$(PY) scripts/serve.py --config configs/split.py --output_dir runs/split

test: $(STAMP)
	$(PY) -m pytest tests

generate: $(STAMP)
	$(PY) scripts/generate.py --config configs/generate_tiny.py \
	  --prompt_ids 1,2,3,4,5,6,7,8 --prompt_ids 42,7,99 --max_new_tokens 16 \
	  --mode split --transfer layerwise

bench: $(STAMP)
	$(PY) scripts/bench_engine.py --output_json bench_results/bench_engine.json

clean:
	rm -rf $(VENV)
