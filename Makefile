# Quick start: `make demo` annotates the bundled example corpus; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-out
CORPORA ?= ../shared/corpora

.PHONY: demo test install browser models accuracy bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A regular (non-editable) install: what users get, package data included.
# build/ is cleared first: setuptools packs whatever build/lib holds, so modules
# moved or deleted since the last build would otherwise be installed again.
install: $(BIN)/python
	rm -rf build
	$(BIN)/python -m pip install --quiet '.[test]'

demo: install
	mkdir -p $(OUT)
	$(BIN)/annotate run examples/corpus -o $(OUT)/example.parquet --overwrite
	$(BIN)/annotate summarize $(OUT)/example.parquet

# The browser test drives Debian's chromium; install it when missing and we may.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	    elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	    else echo "install chromium for the browser test (apt-get install chromium)"; fi; }

test: install browser
	cd tests && ../$(BIN)/python -m pytest -q -p no:cacheprovider

# Retrain every bundled model from scratch on the corpora (fixed seeds).
models: install
	$(BIN)/python scripts/train_bundled_models.py --corpora $(CORPORA) --out models

# The 'bench' extra adds openSMILE + scikit-learn for the issue's ComParE + SVM anchor.
accuracy: install
	$(BIN)/python -m pip install --quiet '.[bench]'
	$(BIN)/python benchmarks/accuracy.py --corpora $(CORPORA)

bench: install
	$(BIN)/python benchmarks/throughput.py --corpora $(CORPORA)

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
