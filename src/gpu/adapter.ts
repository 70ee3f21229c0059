import { existsSync } from 'node:fs';
import { create, globals } from 'webgpu';
import { swiftshaderIcd } from './paths.ts';

/** Which adapter to use: a hardware GPU first with the software device as fallback, or either one forced. */
export type DeviceMode = 'auto' | 'gpu' | 'cpu';

export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** True for a CPU implementation (SwiftShader): correct, but no speed figure from it means anything for a GPU. */
  isSoftware: boolean;
  subgroupMinSize: number;
  subgroupMaxSize: number;
}

export interface GpuFeatures {
  shaderF16: boolean;
  subgroups: boolean;
  timestampQuery: boolean;
}

let globalsInstalled = false;
/**
 * The process's one Dawn instance. It must stay referenced: if it is garbage-collected, dawn.node's
 * event polling keeps calling into the freed instance and the process crashes.
 */
let instance: GPU | null = null;
/** instances made only to list adapters: kept referenced for the same reason */
const listingInstances: GPU[] = [];

/** Installs GPUBufferUsage & co. as globals (dawn.node provides them; browsers have them built in). */
export function installWebGpuGlobals(): void {
  if (globalsInstalled) return;
  Object.assign(globalThis, globals);
  globalsInstalled = true;
}

/**
 * Makes the software Vulkan driver that setup cached visible to the Vulkan loader next to the
 * system's drivers (VK_ADD_DRIVER_FILES keeps real GPUs listed, so "auto" still prefers them).
 * Must run before Dawn creates its Vulkan instance.
 */
function exposeSoftwareDriver(): void {
  const icd = process.env.WGSERVE_SWIFTSHADER_ICD ?? swiftshaderIcd;
  if (!existsSync(icd)) return;
  const current = process.env.VK_ADD_DRIVER_FILES;
  if (current?.split(':').includes(icd)) return;
  process.env.VK_ADD_DRIVER_FILES = current ? `${current}:${icd}` : icd;
}

export function parseDeviceMode(value: string | undefined): DeviceMode {
  const mode = (value ?? 'auto').toLowerCase();
  if (mode === 'auto' || mode === 'gpu' || mode === 'cpu') return mode;
  throw new Error(`unknown device mode "${value}": use auto, gpu or cpu`);
}

const INSTALL_HINT =
  'Install a Vulkan GPU driver (with libvulkan1), or run `make test`/`make serve` once so that ' +
  'setup caches the SwiftShader software driver in .cache/swiftshader.';

/**
 * The adapters Dawn sees, by name, in its order. Dawn's Node binding has no listing call: asked
 * for an adapter name that matches none, it answers with the list, which is parsed here.
 */
export async function listAdapterNames(): Promise<string[]> {
  exposeSoftwareDriver();
  installWebGpuGlobals();
  const probe = create(['adapter=\u0001 wgserve: list adapters']);
  listingInstances.push(probe);
  try {
    await probe.requestAdapter();
    return [];
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    return [...text.matchAll(/name: '(.*)'/g)].map((m) => m[1]);
  }
}

/**
 * Finds an adapter according to `mode` (default: WGSERVE_DEVICE or auto); with `index`, the
 * index-th adapter of listAdapterNames() (boxes with several GPUs: one worker per GPU). Dawn
 * selects adapters by name, so two GPUs with the same name cannot be told apart this way.
 */
export async function requestAdapter(mode: DeviceMode, index?: number): Promise<GPUAdapter> {
  exposeSoftwareDriver();
  installWebGpuGlobals();
  if (index !== undefined && !instance) {
    const names = await listAdapterNames();
    if (!(index >= 0 && index < names.length)) throw new Error(`--adapter ${index}: there are ${names.length} adapters (${names.map((n, i) => `${i}: ${n}`).join(', ') || 'none'})`);
    const first = names.indexOf(names[index]);
    if (first !== index) throw new Error(`--adapter ${index}: adapters ${first} and ${index} are both "${names[index]}", and Dawn selects adapters by name`);
    instance = create([`adapter=${names[index]}`]);
  }
  instance ??= create([]);
  const gpu = instance;
  if (mode === 'cpu') {
    const adapter = await gpu.requestAdapter({ forceFallbackAdapter: true });
    if (!adapter) throw new Error(`no software WebGPU adapter found. ${INSTALL_HINT}`);
    return adapter;
  }
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new Error(`no WebGPU adapter found. ${INSTALL_HINT}`);
  if (mode === 'gpu' && adapter.info.isFallbackAdapter) {
    throw new Error(
      `--device gpu: only a software adapter (${adapter.info.description}) is available. ` +
        'Install the Vulkan driver for your GPU, or use --device auto.',
    );
  }
  return adapter;
}

export function summarizeAdapter(adapter: GPUAdapter): AdapterSummary {
  const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    isSoftware: info.isFallbackAdapter,
    subgroupMinSize: info.subgroupMinSize ?? 0,
    subgroupMaxSize: info.subgroupMaxSize ?? 0,
  };
}
