# darkroom — the two commands of the quick start.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install clean browser

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "darkroom needs Python 3.11 ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU wheel's version first, so nothing later pulls a CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/darkroom serve

# Debian's chromium for the browser tests (tests/browser; skipped when it cannot be installed).
browser:
	@sh tests/browser/ensure-chromium.sh

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
