# Everything a fresh machine needs: `make demo` and `make test` set themselves up.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
DEMO_OUT ?= demo-output

.PHONY: venv install install-test system-deps ui demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so that no other package pulls a multi-GB CUDA build
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

venv install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Debian packages the tests use: headless Chromium for the browser tests; UDUNITS-2 for cfchecker (via
# cfunits) and ncdump (netcdf-bin) for the chip NetCDF checks.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi
	@if ! command -v ncdump >/dev/null 2>&1 || ! ldconfig -p | grep -q libudunits2; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libudunits2-0 libudunits2-dev netcdf-bin; \
	fi
	@if ! command -v npm >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; \
	fi

# The explorer's front end (ui/), built by Vite into the package (src/geofm/server/static/, gitignored).
UI_BUILT := src/geofm/server/static/index.html
UI_SOURCES := $(shell find ui/src -type f) ui/index.html ui/package.json ui/vite.config.js $(wildcard ui/package-lock.json)

ui: $(UI_BUILT)

$(UI_BUILT): $(UI_SOURCES)
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: run 'make system-deps' (installs nodejs/npm)"; exit 1; }
	cd ui && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
	cd ui && npm run build
	touch $@

demo: install ui
	$(VENV)/bin/geofm demo --out $(DEMO_OUT)

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks

test: install-test system-deps ui
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q -rs

bench: install-test
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
