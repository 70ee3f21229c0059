#!/usr/bin/env bash
# Shared setup for `make serve` and `make test`: installs only what is missing.
#   1. npm dependencies from the lockfile;
#   2. the Vulkan loader (libvulkan1);
#   3. nats-server, the control-plane broker for disaggregated workers (into .cache/nats when
#      it cannot be installed system-wide);
#   4. when no GPU Vulkan driver is present, SwiftShader's Vulkan driver, taken out of Debian's
#      chromium-common package into .cache/swiftshader (it links only libc, libm and libgcc).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache="$root/.cache"
mkdir -p "$cache"

log() { echo "[setup] $*" >&2; }

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  log "Node.js >= 20 is required (found: $(node --version 2>/dev/null || echo none))."
  exit 1
fi

# 1. npm dependencies. onnxruntime-node's install script downloads from outside: skip it, its
#    bundled CPU build is all we use.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies (npm ci)"
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
apt_lists_ready=0
apt_download() { # apt_download DIR PACKAGE: fetch a .deb without installing it
  local dir=$1 pkg=$2
  (cd "$dir" && apt-get download "$pkg" >/dev/null 2>&1) && return 0
  [ $apt_lists_ready = 0 ] || return 1
  as_root apt-get update -qq >/dev/null 2>&1 || true
  apt_lists_ready=1
  (cd "$dir" && apt-get download "$pkg" >/dev/null 2>&1)
}

# 2. Vulkan loader. As root it is installed system-wide; otherwise it is unpacked into .cache and
#    the Makefile puts it on LD_LIBRARY_PATH.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 ' && [ ! -e "$cache/vulkan/lib/libvulkan.so.1" ]; then
  log "installing the Vulkan loader (libvulkan1)"
  if ! { as_root apt-get install -y -qq --no-install-recommends libvulkan1 >/dev/null 2>&1 || { as_root apt-get update -qq >/dev/null 2>&1 && as_root apt-get install -y -qq --no-install-recommends libvulkan1 >/dev/null 2>&1; }; }; then
    tmp=$(mktemp -d)
    apt_download "$tmp" libvulkan1 || { log "cannot fetch libvulkan1: install it with your package manager"; exit 1; }
    dpkg -x "$tmp"/libvulkan1_*.deb "$tmp/x"
    mkdir -p "$cache/vulkan/lib"
    cp -a "$tmp"/x/usr/lib/*/libvulkan.so.1* "$cache/vulkan/lib/"
    rm -rf "$tmp"
  fi
fi

# 3. nats-server (Debian's package is one static Go binary). Before the GPU probe, which may end
#    the script early. As root it is installed system-wide; otherwise the binary is unpacked into
#    .cache/nats, where src/workers/nats_server.ts looks for it.
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ] && [ ! -x /usr/bin/nats-server ] && [ ! -x "$cache/nats/nats-server" ]; then
  log "installing nats-server"
  if ! { as_root apt-get install -y -qq --no-install-recommends nats-server >/dev/null 2>&1 || { as_root apt-get update -qq >/dev/null 2>&1 && as_root apt-get install -y -qq --no-install-recommends nats-server >/dev/null 2>&1; }; }; then
    tmp=$(mktemp -d)
    apt_download "$tmp" nats-server || { log "cannot fetch nats-server: install it with your package manager"; exit 1; }
    dpkg -x "$tmp"/nats-server_*.deb "$tmp/x"
    mkdir -p "$cache/nats"
    cp "$tmp/x/usr/sbin/nats-server" "$cache/nats/nats-server"
    rm -rf "$tmp"
  fi
fi

# 4. A GPU Vulkan driver? Ask Dawn for a hardware adapter (installed ICD files alone can name
#    drivers for hardware that is not there).
if [ "$(node scripts/probe-gpu.mjs 2>/dev/null)" = gpu ]; then
  exit 0
fi
sw="$cache/swiftshader"
if [ ! -f "$sw/vk_swiftshader_icd.json" ] || [ ! -f "$sw/libvk_swiftshader.so" ]; then
  log "fetching SwiftShader (software Vulkan) from Debian's chromium-common package"
  tmp=$(mktemp -d)
  apt_download "$tmp" chromium-common || { log "cannot fetch chromium-common: install a Vulkan GPU driver or Debian's chromium"; exit 1; }
  dpkg -x "$tmp"/chromium-common_*.deb "$tmp/x"
  mkdir -p "$sw"
  cp "$tmp/x/usr/lib/chromium/libvk_swiftshader.so" "$tmp/x/usr/lib/chromium/vk_swiftshader_icd.json" "$sw/"
  rm -rf "$tmp"
fi
echo "warning: no GPU Vulkan driver found; using SwiftShader, a CPU fallback (correct but slow)" >&2
