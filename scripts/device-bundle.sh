#!/usr/bin/env bash
# Builds .device/: a self-contained wgserve for a GPU machine that has neither Node.js nor a
# Vulkan loader (the lent GPU machines of the `device` tool). It holds this machine's node
# (xz-compressed), one esbuild bundle of the CLI, the webgpu package with dawn.node, the shaders,
# the embedded model, and Debian's libvulkan1. On the GPU machine:
#   bash .device/run.sh doctor
#   bash .device/run.sh bench kernels --json $OUT/kernels.json --markdown $OUT/kernels.md
#   bash .device/gpu-bench.sh          (bench step, generate and kernels; see below)
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device
rm -rf "$out"
mkdir -p "$out/node_modules/webgpu/dist/linux-x64" "$out/deb"

# the CLI and everything it imports in one ES module; webgpu stays a package (it loads dawn.node by path)
node_modules/.bin/esbuild src/cli/main.ts --bundle --platform=node --format=esm --target=node20 \
  --external:webgpu --external:onnxruntime-node --outfile="$out/wgserve.mjs" --log-level=warning \
  --banner:js="import { createRequire as __wgCreateRequire } from 'node:module'; const require = __wgCreateRequire(import.meta.url);"
cp node_modules/webgpu/package.json node_modules/webgpu/index.js "$out/node_modules/webgpu/"
xz -T0 -c node_modules/webgpu/dist/linux-x64/dawn.node > "$out/dawn.node.xz"
xz -T0 -c "$(command -v node)" > "$out/node.xz"
cp -r shaders "$out/shaders"
mkdir -p "$out/models" && cp -r models/stories260K "$out/models/"
(cd "$out/deb" && apt-get download libvulkan1 >/dev/null 2>&1) || { echo "cannot download libvulkan1" >&2; exit 1; }

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Unpacks (once) and runs the bundled wgserve; arguments go to the wgserve CLI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=/tmp/wgserve-device
mkdir -p "$work/bin"
[ -x "$work/bin/node" ] || xz -dc "$here/node.xz" > "$work/bin/node" && chmod +x "$work/bin/node"
dawn="$here/node_modules/webgpu/dist/linux-x64/dawn.node"
[ -f "$dawn" ] || xz -dc "$here/dawn.node.xz" > "$dawn"
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then
  [ -d "$work/vulkan" ] || dpkg -x "$here"/deb/libvulkan1_*.deb "$work/vulkan"
  export LD_LIBRARY_PATH="$(dirname "$(find "$work/vulkan" -name 'libvulkan.so.1' | head -1)")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# NVIDIA containers keep the Vulkan ICD outside the loader's default search path
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
  if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then export VK_ADD_DRIVER_FILES="$icd${VK_ADD_DRIVER_FILES:+:$VK_ADD_DRIVER_FILES}"; fi
done
export WGSERVE_ROOT="$here"
exec "$work/bin/node" "$here/wgserve.mjs" "$@"
RUN
chmod +x "$out/run.sh"

cat > "$out/gpu-bench.sh" <<'BENCH'
#!/usr/bin/env bash
# The GPU benchmarks in one command: bench step (host cost of a decode step, with a trace), bench
# generate and bench kernels, full shapes, on the hardware GPU (--device gpu refuses a software
# one). Arguments choose among step, generate, kernels (default: all three, in that order). Each
# writes JSON and markdown into $OUT and fills its GPU section of a copy of docs/benchmarks.md,
# also left in $OUT: copy the JSON to bench/results/ and the page to docs/. A benchmark that fails
# is noted in $OUT/failed.txt and the next one runs.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?OUT must name the output folder}
mkdir -p "$here/docs" && cp "$here/../docs/benchmarks.md" "$here/docs/benchmarks.md"
models=${MODELS:-llama-3.2-1b,llama-3-8b}
dtypes=${DTYPES:-f16,q4_0}
bench() { # name, then wgserve arguments
  local name=$1; shift
  echo "== $name" >&2
  bash "$here/run.sh" bench "$@" --device gpu --json "$out/$name-gpu.json" --markdown "$out/$name-gpu.md" --update-docs || echo "$name" >> "$out/failed.txt"
}
bash "$here/run.sh" doctor > "$out/doctor.txt" 2>&1 || true
for what in "${@:-step generate kernels}"; do
  for w in $what; do
    case $w in
      step) bench step step --synthetic "$models" --dtype "$dtypes" --batch 1,8,32 --trace "$out/step-gpu.trace.json" ;;
      generate) bench generate generate --synthetic "$models" --dtype "$dtypes" --batch 1,8,32 ;;
      kernels) bench kernels kernels ;;
      *) echo "unknown benchmark $w (step, generate, kernels)" >&2; exit 2 ;;
    esac
  done
done
cp "$here/docs/benchmarks.md" "$out/benchmarks.md"
BENCH
chmod +x "$out/gpu-bench.sh"
du -sh "$out"
