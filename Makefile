# Two commands do everything: `make demo` (the LIF vs HoSNN protocol on real Fashion-MNIST, short)
# and `make test`. Both create .venv and install requirements.txt into it when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
DEMO_OUT := runs/demo

.PHONY: test test-fast demo bench venv clean

venv: $(INSTALLED)

# The install is large: on x86_64 Linux pip takes torch's CUDA build (torch + the nvidia-* wheels:
# .venv is about 5.7 GB). For a CPU-only machine, `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# installs torch and torchvision from PyTorch's CPU wheel index first (no nvidia-* or triton
# wheels: about 1.5 GB in all; the Triton tests are then skipped).
TORCH_INDEX ?=

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing requirements.txt into $(VENV) (about 5.7 GB with torch's CUDA build on x86_64;" \
	  "TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only torch, about 1.5 GB)"
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --index-url $(TORCH_INDEX) torch torchvision)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m pytest -q tests

# Everything but the tests marked slow (torchrun, the protocol end to end, the Triton interpreter).
test-fast: $(INSTALLED)
	$(PY) -m pytest -q -m "not slow" tests

# About 6 minutes on 2 CPU cores: one epoch per stage on the 60 000 training images, attacks on the
# first 1000 test images, two processes (gloo). Fashion-MNIST comes from Debian's
# dataset-fashion-mnist package.
demo: $(INSTALLED)
	@test -d $(FASHION_MNIST) || apt-get install -y dataset-fashion-mnist || \
	  (echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist, or put its four .gz files in ./datasets/fashionmnist" && false)
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 protocol.py -d 3 --out $(DEMO_OUT) \
	  --lif-epochs 1 --hosnn-epochs 1 --ft-epochs 1 --set DEFAULT.test_samples=1000

bench: $(INSTALLED)
	$(PY) scripts/bench.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
