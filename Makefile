# glammp: `make run` sets up and serves; `make test` sets up and runs the tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
THRIFT ?= thrift
IDL := $(wildcard idl/*.thrift)

# Debian packages glammp runs against (backends, Thrift compiler, C compiler and Python headers
# for the compiled gateway) and tests with (PHP, Java peers).
DEB_RUN := memcached gearman-job-server gearman-tools thrift-compiler sqlite3 gcc python3-dev
DEB_TEST := php-cli php-thrift php-memcached php-gearman default-jdk-headless libthrift-java \
            libslf4j-java nginx-light postgresql openssl nodejs golang-go golang-thrift-dev \
            ruby ruby-thrift libthrift-perl libclass-accessor-perl libbit-vector-perl \
            libio-socket-ssl-perl chromium

.PHONY: run test deps deps-test venv compiled gen gen-check lint bench soak clean

run: deps venv compiled
	$(BIN)/glammp serve $(if $(CONFIG),--config $(CONFIG))

test: deps deps-test venv compiled
	$(BIN)/python -m tests $(PYTEST_ARGS)

# Installs the Debian packages that are missing (as root), or names them (otherwise).
deps:
	@$(PY) scripts/debdeps.py $(DEB_RUN)

deps-test:
	@$(PY) scripts/debdeps.py $(DEB_TEST)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The gateway's relay path in C (mypyc), rebuilt whenever one of its sources changes.
GATEWAY_NATIVE := gateway/wire.py gateway/upstream.py gateway/proxy.py
compiled: build/.gateway-compiled

build/.gateway-compiled: $(VENV)/.installed scripts/compile_gateway.py $(GATEWAY_NATIVE)
	$(BIN)/python scripts/compile_gateway.py
	@touch $@

gen:
	rm -rf gen-py && mkdir -p gen-py
	for f in $(IDL); do $(THRIFT) --gen py -out gen-py $$f || exit 1; done
	rm -f gen-py/__init__.py

# Regenerates into a temporary folder and fails on any difference with gen-py/.
gen-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	for f in $(IDL); do $(THRIFT) --gen py -out $$tmp $$f || exit 1; done && \
	rm -f $$tmp/__init__.py && \
	diff -r -q gen-py $$tmp && echo "gen-py is up to date"

lint: venv
	$(BIN)/ruff check services gateway tests bench
	$(BIN)/mypy services gateway

bench: deps deps-test venv compiled
	$(BIN)/python -m bench $(BENCH_ARGS)

# The whole split deployment under load and faults (default 10 minutes; report in build/soak/).
soak: deps deps-test venv compiled
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache gateway/*.so

# Stubs for other languages and their examples (examples/Makefile; not checked in: build/stubs/).
.PHONY: stubs stubs-check examples-test
stubs stubs-check examples-test:
	$(MAKE) -C examples $@
