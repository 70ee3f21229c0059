import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../src/gpu/paths.ts';

export { writeOutput as writeResult } from '../src/util/output.ts';

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

/** Applies withDocSection to a page of docs/ (default: docs/benchmarks.md). */
export function updateDocSection(tag: string, rewrite: (body: string) => string, page = 'benchmarks.md'): void {
  const path = join(repoRoot, 'docs', page);
  writeFileSync(path, withDocSection(readFileSync(path, 'utf8'), tag, rewrite));
}
