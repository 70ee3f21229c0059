import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { shaderDir } from './paths.ts';

/**
 * WGSL has no #include. A kernel file may say `//#include name` to inline shaders/common/name.wgsl
 * (shared helpers such as weight dequantization and workgroup reductions); `enable` directives of
 * included files are hoisted to the top, where WGSL requires them.
 */
const INCLUDE = /^\s*\/\/#include\s+([\w-]+)\s*$/;
const ENABLE = /^\s*enable\s+[\w,\s]+;\s*$/;

const sourceCache = new Map<string, string>();

export function shaderSource(name: string): string {
  let source = sourceCache.get(name);
  if (source === undefined) {
    source = resolve(readFileSync(join(shaderDir, `${name}.wgsl`), 'utf8'), new Set([name]));
    sourceCache.set(name, source);
  }
  return source;
}

function resolve(text: string, seen: Set<string>): string {
  const enables: string[] = [];
  const body: string[] = [];
  for (const line of text.split('\n')) {
    const include = INCLUDE.exec(line);
    if (include) {
      const lib = `common/${include[1]}`;
      if (seen.has(lib)) continue;
      seen.add(lib);
      const inner = resolve(readFileSync(join(shaderDir, `${lib}.wgsl`), 'utf8'), seen);
      for (const l of inner.split('\n')) (ENABLE.test(l) ? enables : body).push(l);
    } else {
      (ENABLE.test(line) ? enables : body).push(line);
    }
  }
  return [...new Set(enables), ...body].join('\n');
}

/** Every kernel shader (not the common/ helpers), by name. */
export function listShaders(): string[] {
  return readdirSync(shaderDir)
    .filter((f) => f.endsWith('.wgsl'))
    .map((f) => f.slice(0, -'.wgsl'.length))
    .sort();
}

export function listCommonShaders(): string[] {
  return readdirSync(join(shaderDir, 'common'))
    .filter((f) => f.endsWith('.wgsl'))
    .map((f) => `common/${f.slice(0, -'.wgsl'.length)}`)
    .sort();
}
