# Two commands: `make serve` (main job on its default config) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test serve generate bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

generate: $(STAMP)
	$(PY) scripts/generate.py --config configs/generate_tiny.py --prompt_ids 1,2,3,4,5 --prompt_ids 7,8,9 --max_new_tokens 16 --mode split --transfer layerwise

serve: generate

bench: $(STAMP)
	$(PY) scripts/bench_engine.py

clean:
	rm -rf $(VENV)
