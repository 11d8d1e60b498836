# Two commands do everything: `make demo` (the verdict on the shipped zoo and a short training run)
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

# About 6 minutes on 2 CPU cores, offline. (a) The verdict: the shipped zoo's clean- and
# FGSM-trained LIF and HoSNN (checkpoints/fashionmnist/) on the first DEMO_SAMPLES test images at
# eps = 8/255 -- clean, the published PGD-7 and the quick suite's per-sample worst case -- one table,
# also in runs/demo/verdict.md. (b) The pipeline: a short two-process torchrun training run (gloo)
# on DEMO_TRAIN training images, one epoch, into runs/demo/train. Fashion-MNIST comes from Debian's
# dataset-fashion-mnist package.
DEMO_SAMPLES ?= 200
DEMO_TRAIN ?= 4000
demo: $(INSTALLED)
	@test -d $(FASHION_MNIST) || apt-get install -y dataset-fashion-mnist || \
	  (echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist, or put its four .gz files in ./datasets/fashionmnist" && false)
	rm -rf $(DEMO_OUT)
	$(PY) scripts/demo_verdict.py --samples $(DEMO_SAMPLES) --out $(DEMO_OUT)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 main.py -d 3 --out $(DEMO_OUT)/train \
	  --set Network.model=LIF --set Network.epochs=1 --set DEFAULT.train_samples=$(DEMO_TRAIN) \
	  --set DEFAULT.test_samples=500 --set "ATTACK.strength=[8/255]"
	@echo; cat $(DEMO_OUT)/verdict.md

bench: $(INSTALLED)
	$(PY) scripts/bench.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
