#!/bin/sh
# Make Debian's `chromium` available for the browser tests (tests/browser), which are skipped without it.
# Called by `make test` (through `make browser`); installs with apt-get when the machine allows it.
# Set DARKROOM_SKIP_BROWSER_INSTALL=1 to never install anything.
set -u
if [ -n "${DARKROOM_CHROMIUM:-}" ] && [ -x "${DARKROOM_CHROMIUM}" ]; then exit 0; fi
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "${DARKROOM_SKIP_BROWSER_INSTALL:-0}" = "1" ]; then
  echo "chromium not found; browser tests will be skipped (DARKROOM_SKIP_BROWSER_INSTALL=1)"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found and apt-get is not available: install Chromium to run the browser tests"; exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "chromium not found; run 'sudo apt-get install chromium' to enable the browser tests"; exit 0
  fi
fi
echo "installing Debian's chromium for the browser tests…"
if $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  echo "chromium installed: $(command -v chromium)"
else
  echo "could not install chromium; browser tests will be skipped"
fi
exit 0
