PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

# what `make demo` needs: the package, its required dependencies and the web app its output suggests
$(CORE): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[serve]'
	touch $(CORE)

# what `make test` needs besides: every extra, the OpenSSL helper FiftyOne's database needs, Chromium
$(STAMP): $(CORE)
	$(BIN)/pip install -q -e '.[test,timm,hf,datasets,text,fiftyone,serve,docs]'
	bash scripts/fetch-libssl1.1.sh $(VENV)/libssl1.1
	bash scripts/install-chromium.sh
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests

demo: $(CORE)
	$(BIN)/saliencydb demo

bench: $(STAMP)
	$(BIN)/python benchmarks/profiles.py

clean:
	rm -rf $(VENV) build *.egg-info
