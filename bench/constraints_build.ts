/**
 * How long the STATIC trie takes to build and how many bytes it takes (issue 12): random
 * fixed-length sequences (seeded mulberry32), the sweep of REFERENCE.md section 3 at vocab 2048.
 *
 *     npx tsx bench/constraints_build.ts [--sizes 1e5,1e6,1e7] [--vocab 2048] [--length 8] [--seed 1]
 *
 * Writes bench/results/constraints-build.json and .md. The time is buildTrie alone (sorting,
 * numbering, the CSR arrays) from the packed input; generating the input is not counted.
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { automatonBytes, edgesOf } from '../src/constraints/automaton.ts';
import { buildTrie } from '../src/constraints/trie.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { randomSet } from './constraints.ts';
import { writeResult } from './results.ts';

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const sizes = arg('sizes', '1e5,1e6,1e7').split(',').map(Number);
const vocab = Number(arg('vocab', '2048'));
const length = Number(arg('length', '8'));
const seed = Number(arg('seed', '1'));

buildTrie(randomSet(20_000, vocab, length, seed), { vocab }); // warm-up: compiled code for the timed builds

const rows = sizes.map((n) => {
  const input = randomSet(n, vocab, length, seed);
  const rssBefore = process.memoryUsage().rss;
  const t0 = performance.now();
  const trie = buildTrie(input, { vocab });
  const ms = performance.now() - t0;
  const a = trie.automaton;
  const bytes = automatonBytes(a);
  const row = {
    sequences: n,
    distinct: trie.sequences,
    states: a.states,
    edges: edgesOf(a),
    bytes,
    bytesPerSequence: bytes / trie.sequences,
    buildMs: ms,
    nsPerToken: (ms * 1e6) / (n * length),
    fanout: [...trie.fanout],
    rssGrowthMB: (process.memoryUsage().rss - rssBefore) / 2 ** 20,
  };
  console.log(JSON.stringify(row));
  return row;
});

const machine = { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version };
const dir = join(repoRoot, 'bench', 'results');
writeResult(join(dir, 'constraints-build.json'), `${JSON.stringify({ vocab, length, seed, machine, rows }, null, 2)}\n`);
const md = [
  `STATIC trie build (buildTrie), random ${length}-token sequences over vocab ${vocab}, seed ${seed}; ${machine.cpu}, Node ${machine.node}`,
  '',
  '| sequences | distinct | states | edges | MB | bytes / sequence | build s | ns / token | max fan-out by depth |',
  '|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ...rows.map(
    (r) =>
      `| ${r.sequences.toExponential(0)} | ${r.distinct} | ${r.states} | ${r.edges} | ${(r.bytes / 1e6).toFixed(1)} | ${r.bytesPerSequence.toFixed(1)} | ${(r.buildMs / 1000).toFixed(2)} | ${r.nsPerToken.toFixed(1)} | ${r.fanout.join(' ')} |`,
  ),
  '',
].join('\n');
writeResult(join(dir, 'constraints-build.md'), md);
console.log(md);
