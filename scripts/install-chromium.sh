#!/usr/bin/env bash
# The browser tests of `saliencydb serve` (tests/test_serve.py) drive Debian's chromium with its
# chromium-driver through Selenium: no browser is downloaded at run time. This installs the two Debian
# packages when they are missing (apt-get, as root); run by `make install`.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "chromium: not a Debian system; install chromium and its chromedriver for tests/test_serve.py" >&2
  exit 1
fi
sudo_=""
if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi
$sudo_ apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium chromium-driver >/dev/null
echo "chromium: installed $(chromium --version)"
