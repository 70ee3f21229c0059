import { cpus } from 'node:os';
import { type TokenAutomaton, automatonBytes, edgesOf, nextState } from '../src/constraints/automaton.ts';
import { buildTrie } from '../src/constraints/trie.ts';
import { advanceRows, maskRows, packAutomaton, packRows, shapeOf } from '../kernels/constraints.ts';
import type { AdapterSummary, GpuFeatures } from '../src/gpu/adapter.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import type { Step } from '../src/gpu/step.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { runGenerateModel } from './generate.ts';
import type { BenchScale } from './shapes.ts';
import { median, timeRuns } from './timing.ts';

/**
 * Constrained decoding's per-step cost (issue 12): for a batch of B sequences, each somewhere
 * inside a set of random fixed-length token sequences, one step masks a [B, V] logits buffer to
 * each sequence's allowed next tokens and advances each by its sampled token. Three ways on the
 * same inputs (same sequences, same states, same sampled tokens), checked to allow the same tokens
 * before any timing:
 *   gpu      the engine's dispatches (src/constraints/device.ts): one mask + one advance over the
 *            STATIC trie in CSR (setStates is not per step and not timed)
 *   pointer  a trie of JS objects, a Map of children per node: look up the node's children, mask
 *            the row, step to the child of the sampled token
 *   sorted   the set as sorted rows; a sequence's state is the range of rows sharing its prefix:
 *            the distinct next tokens are found by binary searches through the range, the range
 *            of the sampled token by two more
 * Both CPU ways mask a row the same way (keep the allowed logits, fill -inf, put them back), and
 * their times leave out what a CPU mask costs on top in a GPU engine: moving the logits across.
 * Then mask time over a decode step (forward + argmax) of the embedded model's shape and of a
 * 1B-shape synthetic model on the same device, at the model's vocabulary.
 */

/** Random fixed-length sequences, seeded (tokens below `vocab`); packed as buildTrie takes them. */
export function randomSet(n: number, vocab: number, length: number, seed: number) {
  const rng = mulberry32(seed);
  const flat = new Uint32Array(n * length);
  for (let i = 0; i < flat.length; i++) flat[i] = Math.floor(rng() * vocab);
  const offsets = new Uint32Array(n + 1);
  for (let i = 0; i <= n; i++) offsets[i] = i * length;
  return { flat, offsets };
}

// ---------------------------------------------------------------------------------------------
// CPU baselines

/** The row masked to `allowed` (yielding tokens): the allowed logits kept, the rest -inf. */
function maskRow(row: Float32Array, allowed: Iterable<number>, keep: number[]): void {
  keep.length = 0;
  for (const t of allowed) keep.push(t, row[t]);
  row.fill(-Infinity);
  for (let i = 0; i < keep.length; i += 2) row[keep[i]] = keep[i + 1];
}

export interface PointerNode {
  children: Map<number, PointerNode> | null;
}

export function buildPointerTrie(flat: Uint32Array, length: number): PointerNode {
  const root: PointerNode = { children: null };
  for (let at = 0; at < flat.length; at += length) {
    let node = root;
    for (let d = 0; d < length; d++) {
      const children = (node.children ??= new Map());
      let child = children.get(flat[at + d]);
      if (!child) children.set(flat[at + d], (child = { children: null }));
      node = child;
    }
  }
  return root;
}

const NO_CHILDREN = new Map<number, PointerNode>();

/** One step of the pointer trie: masks row i of `logits` to nodes[i]'s children, moves nodes[i] along sampled[i]. */
export function pointerStep(nodes: PointerNode[], sampled: Uint32Array, logits: Float32Array, vocab: number, keep: number[]): void {
  for (let i = 0; i < nodes.length; i++) {
    const children = nodes[i].children ?? NO_CHILDREN;
    maskRow(logits.subarray(i * vocab, (i + 1) * vocab), children.keys(), keep);
    const next = children.get(sampled[i]);
    if (next) nodes[i] = next;
  }
}

/** The set's distinct sequences in lexicographic order, `length` tokens a row. */
export function sortedRows(flat: Uint32Array, length: number): Uint32Array {
  const n = flat.length / length;
  const order = Uint32Array.from({ length: n }, (_, i) => i);
  order.sort((a, b) => {
    for (let d = 0, x = a * length, y = b * length; d < length; d++) if (flat[x + d] !== flat[y + d]) return flat[x + d] - flat[y + d];
    return 0;
  });
  const out = new Uint32Array(flat.length);
  let rows = 0;
  for (let k = 0; k < n; k++) {
    const src = order[k] * length;
    const last = (rows - 1) * length;
    let same = rows > 0;
    for (let d = 0; same && d < length; d++) same = out[last + d] === flat[src + d];
    if (!same) out.set(flat.subarray(src, src + length), rows++ * length);
  }
  return out.slice(0, rows * length);
}

/** A sequence's state in the sorted rows: rows lo .. hi share its first `depth` tokens. */
export interface RowRange {
  lo: number;
  hi: number;
  depth: number;
}

/** The first row in lo .. hi whose token at `depth` exceeds `token` (rows sorted, sharing depth tokens). */
function upperBound(rows: Uint32Array, length: number, lo: number, hi: number, depth: number, token: number): number {
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (rows[mid * length + depth] <= token) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The distinct tokens at r.depth within the range, one binary search each. */
function* nextTokens(rows: Uint32Array, length: number, r: RowRange): Generator<number> {
  if (r.depth >= length) return;
  for (let at = r.lo; at < r.hi; ) {
    const t = rows[at * length + r.depth];
    yield t;
    at = upperBound(rows, length, at, r.hi, r.depth, t);
  }
}

/** One step of the sorted rows, as pointerStep. */
export function sortedStep(rows: Uint32Array, length: number, ranges: RowRange[], sampled: Uint32Array, logits: Float32Array, vocab: number, keep: number[]): void {
  for (let i = 0; i < ranges.length; i++) {
    const r = ranges[i];
    maskRow(logits.subarray(i * vocab, (i + 1) * vocab), nextTokens(rows, length, r), keep);
    if (r.depth >= length) continue;
    const lo = upperBound(rows, length, r.lo, r.hi, r.depth, sampled[i] - 1);
    const hi = upperBound(rows, length, lo, r.hi, r.depth, sampled[i]);
    if (lo < hi) ranges[i] = { lo, hi, depth: r.depth + 1 };
  }
}

// ---------------------------------------------------------------------------------------------
// One set: its three forms and a batch's inputs

export interface ConstraintSet {
  sequences: number;
  vocab: number;
  length: number;
  flat: Uint32Array;
  automaton: TokenAutomaton;
  distinct: number;
  /** null when the pointer trie is not built (too large for this process) */
  pointer: PointerNode | null;
  rows: Uint32Array;
  staticBuildMs: number;
  pointerBuildMs: number | null;
  sortedBuildMs: number;
}

const elapsed = <T>(f: () => T): [T, number] => {
  const t0 = performance.now();
  const out = f();
  return [out, performance.now() - t0];
};

export function makeSet(sequences: number, vocab: number, length: number, seed: number, withPointer: boolean): ConstraintSet {
  const packed = randomSet(sequences, vocab, length, seed);
  const [trie, staticBuildMs] = elapsed(() => buildTrie(packed, { vocab }));
  const [pointer, pointerBuildMs] = withPointer ? elapsed(() => buildPointerTrie(packed.flat, length)) : [null, null];
  const [rows, sortedBuildMs] = elapsed(() => sortedRows(packed.flat, length));
  return { sequences, vocab, length, flat: packed.flat, automaton: trie.automaton, distinct: trie.sequences, pointer, rows, staticBuildMs, pointerBuildMs, sortedBuildMs };
}

/** B sequences of the set, each after a random 0 .. length - 1 of its tokens, and the token each samples next (its own). */
export interface BatchInput {
  states: Uint32Array;
  nodes: PointerNode[] | null;
  ranges: RowRange[];
  sampled: Uint32Array;
}

export function makeBatch(set: ConstraintSet, batch: number, seed: number): BatchInput {
  const rng = mulberry32(seed);
  const { automaton: a, length } = set;
  const states = new Uint32Array(batch);
  const nodes: PointerNode[] = [];
  const ranges: RowRange[] = [];
  const sampled = new Uint32Array(batch);
  for (let i = 0; i < batch; i++) {
    const at = Math.floor(rng() * set.sequences) * length;
    const depth = Math.floor(rng() * length);
    let state = 0;
    let node = set.pointer;
    let range: RowRange = { lo: 0, hi: set.rows.length / length, depth: 0 };
    for (let d = 0; d < depth; d++) {
      const t = set.flat[at + d];
      state = nextState(a, state, t);
      node = node?.children?.get(t) ?? null;
      const lo = upperBound(set.rows, length, range.lo, range.hi, d, t - 1);
      range = { lo, hi: upperBound(set.rows, length, lo, range.hi, d, t), depth: d + 1 };
    }
    states[i] = state;
    if (node) nodes.push(node);
    ranges.push(range);
    sampled[i] = set.flat[at + depth];
  }
  return { states, nodes: set.pointer ? nodes : null, ranges, sampled };
}

// ---------------------------------------------------------------------------------------------
// The GPU side

/** Buffers for B rows over one uploaded automaton. */
class GpuBatch {
  readonly logits: GPUBuffer;
  private readonly initial: GPUBuffer;
  private readonly states: GPUBuffer;
  private readonly rows: GPUBuffer;
  private readonly sampled: GPUBuffer;
  private readonly status: GPUBuffer;
  private readonly shape: { states: number; edges: number };

  constructor(
    private readonly gpu: Gpu,
    private readonly automaton: GPUBuffer,
    a: TokenAutomaton,
    private readonly vocab: number,
    private readonly input: BatchInput,
  ) {
    const B = input.states.length;
    this.shape = shapeOf(a);
    this.logits = gpu.upload(new Float32Array(B * vocab).fill(1), 'logits');
    this.initial = gpu.upload(input.states, 'initial states');
    this.states = gpu.upload(input.states, 'states');
    this.rows = gpu.upload(packRows(Array.from({ length: B }, (_, i) => ({ logitRow: i, slot: i, keep: true }))), 'rows');
    this.sampled = gpu.upload(input.sampled, 'sampled');
    this.status = gpu.createBuffer(B * 4, 'status');
  }

  private get count() {
    return this.input.states.length;
  }

  mask(step: Step): void {
    maskRows(step, { logits: this.logits, automaton: this.automaton, states: this.states, rows: this.rows, count: this.count, cols: this.vocab, a: this.shape, eos: null });
  }

  advance(step: Step): void {
    advanceRows(step, { automaton: this.automaton, states: this.states, rows: this.rows, count: this.count, sampled: this.sampled, status: this.status, cols: this.vocab, a: this.shape });
  }

  /** Back to the batch's states: a copy, outside the timed compute passes. */
  reset(step: Step): void {
    step.copy(this.initial, 0, this.states, 0, this.count * 4);
  }

  async read(): Promise<{ logits: Float32Array; states: Uint32Array }> {
    const step = this.gpu.step();
    const logits = step.readback(this.logits);
    const states = step.readback(this.states, 0, this.count * 4);
    await step.submit();
    return { logits: new Float32Array(await logits), states: new Uint32Array(await states) };
  }

  destroy(): void {
    for (const b of [this.logits, this.initial, this.states, this.rows, this.sampled, this.status]) b.destroy();
  }
}

/** Each row's unmasked tokens. */
const allowedSets = (logits: Float32Array, batch: number, vocab: number): number[][] =>
  Array.from({ length: batch }, (_, i) => {
    const out: number[] = [];
    for (let c = 0; c < vocab; c++) if (logits[i * vocab + c] !== -Infinity) out.push(c);
    return out;
  });

/** Throws unless the CPU's masked rows leave the same logits finite as the GPU's. */
function sameMasks(what: string, gpu: Float32Array, cpu: Float32Array, vocab: number): void {
  for (let c = 0; c < gpu.length; c++) {
    if ((gpu[c] === -Infinity) !== (cpu[c] === -Infinity)) {
      throw new Error(`${what}: row ${Math.floor(c / vocab)} ${cpu[c] === -Infinity ? 'masks' : 'allows'} token ${c % vocab}, the GPU does not`);
    }
  }
}

async function run(gpu: Gpu, record: (step: Step) => void): Promise<void> {
  const step = gpu.step();
  record(step);
  await step.submit();
}

/**
 * Two steps of all three ways from the batch's states (mask, advance, mask): every row must allow
 * the same tokens at each mask, and the GPU's advanced states must be the CPU's nextState. Returns
 * the tokens each row allowed at the first mask.
 */
export async function checkAgreement(gpu: Gpu, set: ConstraintSet, input: BatchInput): Promise<number[][]> {
  const B = input.states.length;
  const V = set.vocab;
  const automaton = gpu.upload(packAutomaton(set.automaton), 'token automaton');
  const g = new GpuBatch(gpu, automaton, set.automaton, V, input);
  try {
    const nodes = input.nodes?.slice() ?? null;
    const ranges = input.ranges.slice();
    const keep: number[] = [];
    const cpu = new Float32Array(B * V);
    let allowed: number[][] = [];
    for (let round = 0; round < 2; round++) {
      gpu.write(g.logits, new Float32Array(B * V).fill(1));
      await run(gpu, (step) => g.mask(step));
      const { logits } = await g.read();
      if (round === 0) allowed = allowedSets(logits, B, V);
      if (nodes) {
        cpu.fill(1);
        pointerStep(nodes, input.sampled, cpu, V, keep);
        sameMasks(`pointer trie, step ${round}`, logits, cpu, V);
      }
      cpu.fill(1);
      sortedStep(set.rows, set.length, ranges, input.sampled, cpu, V, keep);
      sameMasks(`sorted rows, step ${round}`, logits, cpu, V);
      if (round > 0) break;
      await run(gpu, (step) => g.advance(step));
      const { states } = await g.read();
      for (let i = 0; i < B; i++) {
        const next = nextState(set.automaton, input.states[i], input.sampled[i]);
        if (states[i] !== next) throw new Error(`GPU advance: row ${i} went to state ${states[i]}, not ${next}`);
      }
    }
    return allowed;
  } finally {
    g.destroy();
    automaton.destroy();
  }
}

/** Median seconds of one GPU step (mask + advance from the batch's states), by timeRuns. */
async function timeGpu(gpu: Gpu, automaton: GPUBuffer, set: ConstraintSet, input: BatchInput, scale: BenchScale): Promise<number> {
  const g = new GpuBatch(gpu, automaton, set.automaton, set.vocab, input);
  try {
    return await timeRuns(
      gpu,
      (step) => {
        g.reset(step);
        g.mask(step);
        g.advance(step);
      },
      scale,
    );
  } finally {
    g.destroy();
  }
}

/** Median seconds of one CPU step, as timeRuns does it: each sample repeats the step to last ~2-5 ms; state restored before each. */
function timeCpu(step: () => void, restore: () => void, scale: BenchScale): number {
  const once = (reps: number) => {
    let total = 0;
    for (let i = 0; i < reps; i++) {
      restore();
      const t0 = performance.now();
      step();
      total += performance.now() - t0;
    }
    return total / reps / 1e3;
  };
  once(1);
  const estimate = once(1);
  const reps = Math.min(64, Math.max(1, Math.ceil((scale === 'full' ? 5e-3 : 2e-3) / Math.max(estimate, 1e-9))));
  return median(Array.from({ length: scale === 'full' ? 7 : 3 }, () => once(reps)));
}

// ---------------------------------------------------------------------------------------------
// The sweep

export interface ConstraintBenchOptions {
  /** set sizes (sequences) */
  sizes: number[];
  vocabs: number[];
  batches: number[];
  /** tokens per sequence */
  length: number;
  /** the largest set the pointer trie is built for (it takes ~GBs of JS heap by 1e7) */
  pointerMax: number;
  scale: BenchScale;
  /** decode steps to compare with: MODEL_SHAPES key, format, batch sizes */
  models: { model: string; dtype: 'f32' | 'f16' | 'q4_0'; batches: number[] }[];
  seed: number;
  log?: (line: string) => void;
}

export interface ConstraintBuildResult {
  sequences: number;
  vocab: number;
  distinct: number;
  states: number;
  edges: number;
  /** CSR bytes (what the device holds) */
  bytes: number;
  staticBuildMs: number;
  pointerBuildMs: number | null;
  sortedBuildMs: number;
}

export interface ConstraintStepResult {
  sequences: number;
  vocab: number;
  batch: number;
  /** mean allowed tokens per row at the timed step */
  meanAllowed: number;
  gpuUs: number;
  pointerUs: number | null;
  sortedUs: number;
}

export interface DecodeFraction {
  model: string;
  dtype: string;
  vocab: number;
  batch: number;
  /** prompt tokens per sequence before the decode steps */
  promptTokens: number;
  /** mean decode step (forward + argmax) over the run's decode steps */
  decodeStepMs: number;
  /** GPU mask + advance at the model's vocabulary, the largest set */
  maskUs: number;
  fraction: number;
}

export interface ConstraintBenchReport {
  adapter: AdapterSummary;
  features: GpuFeatures;
  machine: { cpu: string; cores: number; node: string };
  date: string;
  timing: 'gpu-timestamps' | 'wall-clock';
  scale: BenchScale;
  length: number;
  seed: number;
  pointerMax: number;
  builds: ConstraintBuildResult[];
  steps: ConstraintStepResult[];
  fractions: DecodeFraction[];
}

export async function runConstraintBench(gpu: Gpu, o: ConstraintBenchOptions): Promise<ConstraintBenchReport> {
  const log = o.log ?? (() => {});
  const builds: ConstraintBuildResult[] = [];
  const steps: ConstraintStepResult[] = [];
  /** GPU seconds by `${vocab} ${batch}` at the largest set, for the decode fractions */
  const largest = Math.max(...o.sizes);
  const gpuAtLargest = new Map<string, number>();

  const sweep = async (sequences: number, vocab: number, batches: number[], cpu: boolean) => {
    const set = makeSet(sequences, vocab, o.length, o.seed, cpu && sequences <= o.pointerMax);
    const a = set.automaton;
    const build: ConstraintBuildResult = {
      sequences,
      vocab,
      distinct: set.distinct,
      states: a.states,
      edges: edgesOf(a),
      bytes: automatonBytes(a),
      staticBuildMs: set.staticBuildMs,
      pointerBuildMs: set.pointerBuildMs,
      sortedBuildMs: set.sortedBuildMs,
    };
    if (cpu) {
      builds.push(build);
      log(`set ${sequences.toExponential(0)} vocab ${vocab}: ${a.states} states, ${(build.bytes / 1e6).toFixed(1)} MB, STATIC ${(set.staticBuildMs / 1e3).toFixed(2)} s, pointer ${set.pointerBuildMs === null ? 'skipped' : `${(set.pointerBuildMs / 1e3).toFixed(2)} s`}, sort ${(set.sortedBuildMs / 1e3).toFixed(2)} s`);
    }
    const automaton = gpu.upload(packAutomaton(a), 'token automaton');
    try {
      for (const batch of batches) {
        const input = makeBatch(set, batch, o.seed * 1009 + batch);
        const allowed = await checkAgreement(gpu, set, input);
        const gpuSeconds = await timeGpu(gpu, automaton, set, input, o.scale);
        if (sequences === largest) gpuAtLargest.set(`${vocab} ${batch}`, gpuSeconds);
        if (!cpu) continue;
        const logits = new Float32Array(batch * vocab).fill(1);
        const keep: number[] = [];
        let nodes: PointerNode[] = [];
        let ranges: RowRange[] = [];
        const pointer = input.nodes;
        const pointerSeconds = pointer
          ? timeCpu(
              () => pointerStep(nodes, input.sampled, logits, vocab, keep),
              () => (nodes = pointer.slice()),
              o.scale,
            )
          : null;
        const sortedSeconds = timeCpu(
          () => sortedStep(set.rows, o.length, ranges, input.sampled, logits, vocab, keep),
          () => (ranges = input.ranges.slice()),
          o.scale,
        );
        const r: ConstraintStepResult = { sequences, vocab, batch, meanAllowed: allowed.reduce((n, s) => n + s.length, 0) / batch, gpuUs: gpuSeconds * 1e6, pointerUs: pointerSeconds === null ? null : pointerSeconds * 1e6, sortedUs: sortedSeconds * 1e6 };
        steps.push(r);
        log(`  batch ${String(batch).padStart(3)}: GPU ${num(r.gpuUs)} µs, pointer trie ${r.pointerUs === null ? '-' : `${num(r.pointerUs)} µs`}, sorted rows ${num(r.sortedUs)} µs (${num(r.meanAllowed)} tokens allowed per row)`);
      }
    } finally {
      automaton.destroy();
    }
  };

  for (const sequences of o.sizes) for (const vocab of o.vocabs) await sweep(sequences, vocab, o.batches, true);

  const fractions: DecodeFraction[] = [];
  if (o.models.length > 0) {
    const { measureCopyBandwidth } = await import('./cases/copy.ts');
    const copy = await measureCopyBandwidth(gpu, o.scale);
    for (const m of o.models) {
      const run = await runGenerateModel(gpu, copy, {
        model: m.model,
        dtype: m.dtype,
        scale: o.scale,
        batches: m.batches,
        promptTokens: o.scale === 'full' ? 128 : 4,
        decodeTokens: o.scale === 'full' ? 8 : 2,
        seed: o.seed,
        log,
      });
      const vocab = run.shape.vocab;
      const missing = m.batches.filter((b) => !gpuAtLargest.has(`${vocab} ${b}`));
      if (missing.length > 0) await sweep(largest, vocab, missing, false);
      for (const x of run.results) {
        const maskUs = gpuAtLargest.get(`${vocab} ${x.batch}`)! * 1e6;
        fractions.push({ model: run.model, dtype: run.dtype, vocab, batch: x.batch, promptTokens: x.promptTokens, decodeStepMs: x.meanDecodeStepMs, maskUs, fraction: maskUs / 1e3 / x.meanDecodeStepMs });
      }
    }
  }
  return {
    adapter: gpu.adapter,
    features: gpu.features,
    machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version },
    date: new Date().toISOString(),
    timing: gpu.features.timestampQuery ? 'gpu-timestamps' : 'wall-clock',
    scale: o.scale,
    length: o.length,
    seed: o.seed,
    pointerMax: o.pointerMax,
    builds,
    steps,
    fractions,
  };
}

// ---------------------------------------------------------------------------------------------
// Markdown

const num = (x: number, digits = 1) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(digits) : x.toPrecision(3));
const exp = (n: number) => n.toExponential(0).replace('+', '');
const ratio = (a: number | null, b: number) => (a === null ? '-' : `${num(a / b)}x`);

export function constraintBenchMarkdown(r: ConstraintBenchReport): string {
  const a = r.adapter;
  const device = `${a.description} (${a.vendor} ${a.architecture})${a.isSoftware ? ', SOFTWARE device: GPU columns are CPU-emulated numbers' : ''}`;
  const lines = [
    `Device: ${device}; ${r.timing === 'gpu-timestamps' ? 'GPU timestamps' : 'wall clock'}. CPU: ${r.machine.cpu} x ${r.machine.cores}, Node ${r.machine.node}. ${r.date.slice(0, 10)}.`,
    `Random ${r.length}-token sequences (seed ${r.seed}), tokens below the vocabulary; each of the batch's sequences after a random 0 .. ${r.length - 1} of its own tokens, sampling its next one. ` +
      `One step = mask the [batch, vocab] logits + advance every sequence; median per step. The three agreed on every row's allowed tokens before timing. ` +
      `Pointer trie built up to ${exp(r.pointerMax)} sequences.`,
    '',
    '| sequences | vocab | batch | allowed / row | GPU µs | pointer trie µs | sorted rows µs | pointer / GPU | sorted / GPU |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.steps.map(
      (s) =>
        `| ${exp(s.sequences)} | ${s.vocab} | ${s.batch} | ${num(s.meanAllowed)} | ${num(s.gpuUs)} | ${s.pointerUs === null ? '-' : num(s.pointerUs)} | ${num(s.sortedUs)} | ${ratio(s.pointerUs, s.gpuUs)} | ${ratio(s.sortedUs, s.gpuUs)} |`,
    ),
  ];
  if (r.fractions.length > 0) {
    lines.push(
      '',
      `Against a decode step (forward pass + argmax, after a ${r.fractions[0].promptTokens}-token prompt; synthetic weights in the model's shape and format, ${r.scale === 'full' ? 'full shapes' : 'REDUCED shapes: width / 8'}; stories260K is the embedded model's shape and f32 format), mask + advance at the model's vocabulary over the ${exp(Math.max(...r.steps.map((s) => s.sequences), 0))}-sequence set:`,
      '',
      '| model | vocab | batch | decode step ms | mask + advance µs | % of the step |',
      '|---|---:|---:|---:|---:|---:|',
      ...r.fractions.map((f) => `| ${f.model}, ${f.dtype} | ${f.vocab} | ${f.batch} | ${num(f.decodeStepMs)} | ${num(f.maskUs)} | ${(100 * f.fraction).toPrecision(2)}% |`),
    );
  }
  lines.push(
    '',
    'Building the three forms (STATIC: buildTrie, the CSR the GPU holds; pointer trie: a Map per node; sorted rows: sort + deduplicate); `bench/constraints_build.ts` measures the STATIC build alone up to 1e7:',
    '',
    '| sequences | vocab | distinct | states | CSR MB | STATIC build s | pointer trie build s | sorted rows s |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.builds.map(
      (b) =>
        `| ${exp(b.sequences)} | ${b.vocab} | ${b.distinct} | ${b.states} | ${(b.bytes / 1e6).toFixed(1)} | ${(b.staticBuildMs / 1e3).toFixed(2)} | ${b.pointerBuildMs === null ? 'skipped' : (b.pointerBuildMs / 1e3).toFixed(2)} | ${(b.sortedBuildMs / 1e3).toFixed(2)} |`,
    ),
  );
  return lines.join('\n') + '\n';
}
