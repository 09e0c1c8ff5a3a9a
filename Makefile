# logos-p2p: `make run` starts a node, `make test` runs the whole suite.
# Both create the virtual environment and install what they need first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
CODE   := $(wildcard src tests examples bench)

.PHONY: run test demo lint fmt bench flood soak clean lock system-deps peers

# Debian packages the tests drive (installed when missing, if we may), each as
# PROBE=PACKAGE: a command on PATH, or an absolute path that the package installs.
# tmux: the chat example's terminals; the rest builds the C++ client (clients/cpp/).
SYSTEM_DEPS := tmux=tmux capnp=capnproto /usr/include/capnp/ez-rpc.h=libcapnp-dev \
	/usr/include/openssl/hmac.h=libssl-dev cmake=cmake g++=g++ make=make

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[node,test,dev,bench]'
	touch $@

## run: start a node on its defaults (ARGS="--listen ... --rpc ..." to change them)
run: $(STAMP)
	$(BIN)/logos-p2p serve $(ARGS)

## demo: two nodes on loopback, the echo module on one, a ping through the other
demo: $(STAMP)
	$(BIN)/python examples/echo/demo.py

system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do probe=$${dep%%=*}; pkg=$${dep#*=}; \
	  case $$probe in /*) test -e $$probe ;; *) command -v $$probe >/dev/null ;; esac || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $$missing; \
	  elif command -v sudo >/dev/null; then sudo apt-get install -y -q $$missing; \
	  else echo "please install:$$missing" >&2; exit 1; fi; \
	fi

## peers: the real go-libp2p (p2pd) and js-libp2p peers for the interop tests (cached in .cache/)
peers: $(STAMP)
	$(BIN)/python tests/interop/setup_peers.py

## test: lint, type-check and run the whole test suite
test: $(STAMP) system-deps peers
	$(BIN)/ruff check $(CODE)
	$(BIN)/mypy
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix $(CODE)
	$(BIN)/ruff format $(CODE)

## soak: 10,000 streams, ~10% faults, across module processes (SOAK_STREAMS=N to change)
soak: $(STAMP)
	SOAK_STREAMS=$${SOAK_STREAMS:-10000} $(BIN)/python -m pytest tests/test_soak.py -q -s -p no:cacheprovider

## bench: module-handled echo vs an in-process handler vs p2pd, and remote modules (push, tcp:, tls:) (ARGS=--quick: quicker)
bench: $(STAMP) peers
	$(BIN)/python bench/bench.py --paths direct,logos,push,tcp,tls,p2pd $(ARGS)

## flood: the hostile-network floods at full size, logos-p2p against p2pd (ARGS=--quick: smaller)
flood: $(STAMP) peers
	$(BIN)/python bench/flood.py $(ARGS)

lock: $(STAMP)
	{ echo "# Exact versions every 'make' install resolves to (pip -c). Regenerate: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^logos-p2p'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .cache tests/interop/js/node_modules
