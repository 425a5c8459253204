# napari-sima developer commands. Every target creates .venv with the machine's python3
# when it is missing, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP_TEST := $(VENV)/.installed-test
STAMP_DEMO := $(VENV)/.installed-demo

.PHONY: help venv demo test bench fuzz screenshots check-xvfb clean

help:
	@echo "make demo         - install and open napari with the sample dataset and our widgets"
	@echo "make test         - install with test extras and run the whole suite headless (Xvfb)"
	@echo "make bench        - run the benchmarks in benchmarks/ (writes multi-GB temp files)"
	@echo "make fuzz         - fuzz every file reader (>= 10,000 inputs per format; table)"
	@echo "make screenshots  - regenerate screenshots/ from a real viewer under Xvfb"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[test]"
	@touch $@

$(STAMP_DEMO): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[qt]"
	@touch $@

venv: $(STAMP_TEST)

check-xvfb:
	@command -v Xvfb >/dev/null 2>&1 || { \
	  echo "ERROR: Xvfb is not installed; the GUI tests need a virtual X server."; \
	  echo "On Debian/Ubuntu install it with:"; \
	  echo "  sudo apt-get install xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 \\"; \
	  echo "       libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \\"; \
	  echo "       libxcb-xinerama0 libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \\"; \
	  echo "       libfontconfig1 libdbus-1-3"; \
	  exit 1; }

# pytest-xvfb starts one Xvfb for the whole session; QT_QPA_PLATFORM=xcb makes Qt use it.
test: $(STAMP_TEST) check-xvfb
	QT_QPA_PLATFORM=xcb NUMBA_CACHE_DIR=$(CURDIR)/$(VENV)/numba-cache \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP_DEMO)
	$(BIN)/napari-sima demo

bench: $(STAMP_TEST)
	NUMBA_CACHE_DIR=$(CURDIR)/$(VENV)/numba-cache $(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# FUZZ_ARGS="--cases 100000 --targets tiff,hdf5" to choose
fuzz: $(STAMP_TEST)
	NUMBA_CACHE_DIR=$(CURDIR)/$(VENV)/numba-cache $(BIN)/python -m fuzz.run $(FUZZ_ARGS)

screenshots: $(STAMP_TEST) check-xvfb
	$(BIN)/python scripts/make_screenshots.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
