# Turnout — one entry point for the common tasks. Every target sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROTOS := protos/model_config.proto protos/inference.proto protos/turnout/admin.proto
export LD_LIBRARY_PATH := $(shell $(PY) -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))' 2>/dev/null):$(LD_LIBRARY_PATH)

.PHONY: venv kserve-sdk serve test lint typecheck protos protos-check bench demo-models clean

# constraints.txt pins every runtime and dev dependency to the versions the tests last passed with
# (tests/unit/test_packaging.py checks them against pyproject.toml's bounds)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# The KServe Python SDK pins its own protobuf and grpcio: it gets a venv of its own, used by
# tests/integration/test_kserve_sdk.py through KSERVE_PYTHON.
KSERVE_VENV ?= .venv-kserve
$(KSERVE_VENV)/.installed: tests/integration/kserve-sdk.txt
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q -r tests/integration/kserve-sdk.txt
	touch $@

kserve-sdk: $(KSERVE_VENV)/.installed

## Start Turnout on the built-in demo repository (HTTP :8000, gRPC :8001, metrics at :8000/metrics)
# jemalloc, when installed (Debian: libjemalloc2), serves large tensors without a page fault per
# byte mapped (glibc malloc maps and unmaps each large buffer): benchmarks/results/CURVES.md
# (and keeps freed pages: purged ones fault in anew on every large request)
, := ,
JEMALLOC := $(firstword $(wildcard /usr/lib/*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2))

serve: venv
	$(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC) MALLOC_CONF=$${MALLOC_CONF:-dirty_decay_ms:-1$(,)muzzy_decay_ms:-1}) \
	  $(VENV)/bin/turnout serve $(ARGS)

## Lint, type-check, check generated stubs, run the whole test suite.
## Unit and integration tests run in two processes: the integration tests import
## tritonclient's protobuf stubs, which declare the same `inference.*` names as ours.
test: venv kserve-sdk protos-check lint typecheck
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)
	KSERVE_PYTHON=$(KSERVE_VENV)/bin/python $(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check server router model_store drift

typecheck: venv
	$(VENV)/bin/mypy -p turnout

# protoc names the generated modules after the .proto paths (protos.*); Turnout imports them as
# turnout.protos.*, so the generated imports and module names are rewritten to that
PROTOS_NAMESPACE := sed -i -e 's/^from protos\([. ]\)/from turnout.protos\1/' -e "s/'protos\./'turnout.protos./"

protos: venv
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	$(PROTOS_NAMESPACE) $$(find protos -name '*_pb2*')

protos-check: venv
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -I . --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	$(PROTOS_NAMESPACE) $$(find $$tmp -name '*_pb2*') && \
	for f in $$(cd $$tmp && find protos -name '*_pb2*'); do \
	  cmp -s $$tmp/$$f $$f || { echo "generated stub $$f is stale: run 'make protos'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated stubs are up to date"

demo-models: venv
	$(PY) -m model_store.demo.build

bench: venv
	$(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) $(KSERVE_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
