import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { repoRoot } from '../src/gpu/paths.ts';

/** Writes a result file (JSON, markdown, SVG), creating its folder. */
export function writeResult(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

/**
 * Rewrites the body between `<!-- tag:begin -->` and `<!-- tag:end -->` of a markdown text: the
 * sections of docs/benchmarks.md that `--update-docs` fills, one per benchmark and device class.
 */
export function withDocSection(doc: string, tag: string, rewrite: (body: string) => string): string {
  const begin = `<!-- ${tag}:begin -->`;
  const end = `<!-- ${tag}:end -->`;
  const i = doc.indexOf(begin);
  const j = doc.indexOf(end);
  if (i < 0 || j < i) throw new Error(`no ${begin} ... ${end} section`);
  return doc.slice(0, i + begin.length) + rewrite(doc.slice(i + begin.length, j)) + doc.slice(j);
}

/** Applies withDocSection to docs/benchmarks.md. */
export function updateBenchmarksDoc(tag: string, rewrite: (body: string) => string): void {
  const path = join(repoRoot, 'docs', 'benchmarks.md');
  writeFileSync(path, withDocSection(readFileSync(path, 'utf8'), tag, rewrite));
}
