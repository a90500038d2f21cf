#!/usr/bin/env bash
# setup.sh [BUILD_DIR [MESON_ARGS...]] — install what is missing (Debian packages, as root),
# configure the meson build once, compile. Used by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true

pkgs=(gcc g++ make meson ninja-build pkg-config libopenblas-openmp-dev check libsubunit-dev libcjson-dev
      libpng-dev zlib1g-dev libzip-dev
      libfreetype-dev fonts-noto-color-emoji unicode-data   # the emoji dataset (draft-emoji-data)
      fonts-dejavu-core)   # grid captions (draft/image.c)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$@" >/dev/null || { meson setup "$build" "$@"; exit 1; }
fi
ninja -C "$build" | tail -n 1
