import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { type ConstraintSet, checkAgreement, constraintBenchMarkdown, makeBatch, makeSet, pointerStep, runConstraintBench, sortedStep } from '../bench/constraints.ts';
import { withDocSection } from '../bench/results.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { useGpu } from './helpers/gpu.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const gpu = useGpu();
const tmpDir = useTmpDirs('wgserve-bench-constraints-');

/** The oracle: the tokens that follow `prefix` among the raw sequences, by a scan of them all. */
function followers(set: ConstraintSet, member: number[]): number[] {
  const out = new Set<number>();
  const L = set.length;
  for (let at = 0; at < set.flat.length; at += L) {
    let d = 0;
    while (d < member.length && set.flat[at + d] === member[d]) d++;
    if (d === member.length && d < L) out.add(set.flat[at + d]);
  }
  return [...out].sort((a, b) => a - b);
}

/** Each row's prefix, recovered from the sorted-rows state (the first row of its range). */
const prefixes = (set: ConstraintSet, ranges: { lo: number; depth: number }[]) => ranges.map((r) => Array.from(set.rows.subarray(r.lo * set.length, r.lo * set.length + r.depth)));

const allowed = (logits: Float32Array, rows: number, vocab: number) =>
  Array.from({ length: rows }, (_, i) => [...logits.subarray(i * vocab, (i + 1) * vocab).keys()].filter((c) => logits[i * vocab + c] !== -Infinity));

describe('bench constraints', () => {
  // a vocabulary that is no multiple of 32 (the bitmap's last word), a batch wider than one advance workgroup (64)
  const V = 45;

  it('the GPU mask allows exactly the tokens that follow each prefix in the set, as both CPU baselines do', async () => {
    const set = makeSet(3000, V, 5, 7, true);
    const input = makeBatch(set, 70, 3);
    const pre = prefixes(set, input.ranges);
    expect(new Set(pre.map((p) => p.length)).size).toBeGreaterThan(3); // rows at several depths
    const gpuSets = await checkAgreement(gpu(), set, input);
    const want = pre.map((p) => followers(set, p));
    expect(gpuSets).toEqual(want);
    expect(want.some((w) => w.length > 1)).toBe(true);
    // the baselines on their own, against the oracle (checkAgreement compared them with the GPU)
    const logits = new Float32Array(70 * V).fill(1);
    pointerStep(input.nodes!.slice(), input.sampled, logits, V, []);
    expect(allowed(logits, 70, V)).toEqual(want);
    logits.fill(1);
    const ranges = input.ranges.slice();
    sortedStep(set.rows, set.length, ranges, input.sampled, logits, V, []);
    expect(allowed(logits, 70, V)).toEqual(want);
    // and the sorted rows advanced along each row's sampled token
    expect(prefixes(set, ranges)).toEqual(pre.map((p, i) => [...p, input.sampled[i]]));
  });

  it('the agreement check fails when a baseline disagrees with the GPU', async () => {
    const set = makeSet(500, V, 4, 2, true);
    const input = makeBatch(set, 16, 1);
    // a pointer trie that lost one child of a row's node
    const node = input.nodes!.find((n) => (n.children?.size ?? 0) > 1)!;
    const lost = [...node.children!][0];
    node.children!.delete(lost[0]);
    await expect(checkAgreement(gpu(), set, input)).rejects.toThrow(/pointer trie, step 0/);
    node.children!.set(lost[0], lost[1]);
    // sorted rows missing those that start with the smallest first token: the start state allows it, they do not
    let cut = 0;
    while (set.rows[cut * set.length] === set.rows[0]) cut++;
    const lossy = { ...set, rows: set.rows.slice(cut * set.length), pointer: null };
    const batch = makeBatch(lossy, 16, 1);
    expect(batch.ranges.some((r) => r.depth === 0)).toBe(true);
    await expect(checkAgreement(gpu(), lossy, batch)).rejects.toThrow(/sorted rows, step 0: row \d+ masks token/);
  });

  it('a tiny sweep reports every (set, vocab, batch) and the decode-step fractions', async () => {
    const report = await runConstraintBench(gpu(), {
      sizes: [200, 1500],
      vocabs: [V, 300],
      batches: [1, 3],
      length: 4,
      pointerMax: 200,
      scale: 'reduced',
      models: [{ model: 'stories260k', dtype: 'f32', batches: [2] }],
      seed: 5,
    });
    expect(report.steps.map((s) => [s.sequences, s.vocab, s.batch])).toEqual([200, 1500].flatMap((n) => [V, 300].flatMap((v) => [1, 3].map((b) => [n, v, b]))));
    for (const s of report.steps) {
      expect(s.gpuUs).toBeGreaterThan(0);
      expect(s.sortedUs).toBeGreaterThan(0);
      expect(s.pointerUs === null).toBe(s.sequences > 200);
    }
    expect(report.builds.map((b) => [b.sequences, b.vocab, b.pointerBuildMs === null])).toEqual([
      [200, V, false],
      [200, 300, false],
      [1500, V, true],
      [1500, 300, true],
    ]);
    // stories260K's vocabulary (512) is not in the sweep: its mask is measured on its own, at the largest set
    expect(report.fractions).toHaveLength(1);
    const f = report.fractions[0];
    expect(f).toMatchObject({ model: 'stories260K', vocab: 512, batch: 2 });
    expect(f.fraction).toBeCloseTo(f.maskUs / 1e3 / f.decodeStepMs, 12);
    const md = constraintBenchMarkdown(report);
    expect(md.split('\n').filter((l) => /^\| \d/.test(l))).toHaveLength(8 + 4);
    expect(md).toContain('| stories260K, f32 | 512 | 2 |');
  });

  it('runs from the CLI, and docs/benchmarks.md has the sections --update-docs fills', async () => {
    const dir = tmpDir();
    const json = join(dir, 'c.json');
    await promisify(execFile)('node', [join(repoRoot, 'bin', 'wgserve.mjs'), 'bench', 'constraints', '--sizes', '100', '--vocab', '64', '--batch', '2', '--length', '3', '--no-models', '--device', 'cpu', '--json', json, '--markdown', join(dir, 'c.md')], { cwd: repoRoot });
    const report = JSON.parse(readFileSync(json, 'utf8'));
    expect(report.steps).toHaveLength(1);
    expect(report.fractions).toEqual([]);
    expect(readFileSync(join(dir, 'c.md'), 'utf8')).toContain('| 1e2 | 64 | 2 |');
    const doc = readFileSync(join(repoRoot, 'docs', 'benchmarks.md'), 'utf8');
    for (const tag of ['constraints-software', 'constraints-gpu']) expect(() => withDocSection(doc, tag, (b) => b)).not.toThrow();
  }, 60_000);
});
