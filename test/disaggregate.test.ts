import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EngineHandle, FinishReason, SamplingOptions } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import type { TokenAutomaton } from '../src/constraints/automaton.ts';
import { compileGuide } from '../src/constraints/guide.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { decode } from '../src/model/tokenizer/index.ts';
import { startServer } from '../src/server/app.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { Cluster } from '../src/workers/cluster.ts';
import { ChildProcessPlane, type DataAddress } from '../src/workers/control.ts';
import { natsControlPlane } from '../src/workers/nats_link.ts';
import { type NatsServerProcess, startNatsServer } from '../src/workers/nats_server.ts';
import { FrameDecoder, MAX_FRAME_BYTES, type Message, PROTOCOL_VERSION, encodeFrame, modelFingerprint } from '../src/workers/protocol.ts';
import { KvRelay, LOSS_LIMIT_MS, SLACK, STATUS_LIMIT_MS, TEST_LIMIT_MS, TapPlane, WORKERS_START_LIMIT_MS, waitFor, within } from './helpers/disagg.ts';
import { useGpu } from './helpers/gpu.ts';

/**
 * Disaggregated serving with real worker processes (each with its own software WebGPU device),
 * real TCP KV transfer and a real nats-server: outputs equal colocated serving; a decode worker
 * killed mid-stream, a prefill worker killed or stopped mid-handover and a broker restart cost no
 * request its output, and leave no KV reserved; a worker of another model is refused; fuzzed
 * data-plane input closes only its own connection. Waits are on conditions, bounded by the
 * workers' constants (helpers/disagg.ts).
 */
const PROMPTS = [
  'Once upon a time',
  'The little dog',
  'Tom and Sue went to the park',
  'One day a bird',
  'Lily wanted to play',
  'The sun was hot and the boy',
  'Mom said',
  'There was a big red ball',
  'Ben',
  'The cat and the mouse were friends. One day',
];
const greedy = (maxTokens: number): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] });
/** greedy, plus two seeded sampled requests: the RNG is keyed by token index, so a handover changes nothing */
const samplingOf = (i: number, maxTokens: number): SamplingOptions => (i % 5 === 4 ? { ...greedy(maxTokens), temperature: 0.8, seed: 100 + i } : greedy(maxTokens));

interface Outcome {
  tokens: number[];
  reason: FinishReason;
  error?: Error;
}

function run(cluster: Cluster, prompt: number[], sampling: SamplingOptions, constraint?: TokenAutomaton): { handle: EngineHandle; done: Promise<Outcome> } {
  const tokens: number[] = [];
  let handle!: EngineHandle;
  const done = new Promise<Outcome>((resolve) => {
    handle = cluster.submit({
      prompt,
      sampling,
      constraint,
      events: {
        onToken: (e) => tokens.push(e.token),
        onFinish: (reason, _usage, error) => resolve({ tokens, reason, error }),
      },
    });
  });
  return { handle, done };
}

type WorkerProcess = ChildProcess & { exited: Promise<number | null>; stderr: NonNullable<ChildProcess['stderr']>; log: string[] };

/** A worker started on its own (as on another host), its stderr lines collected. */
function workerProcess(args: string[]): WorkerProcess {
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'wgserve.mjs'), 'worker', ...args], { stdio: ['ignore', 'ignore', 'pipe'] }) as WorkerProcess;
  child.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  child.log = [];
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => child.log.push(...d.split('\n').filter(Boolean)));
  return child;
}

/** Sends `bytes` to a decode worker's KV port, ends the stream, and returns the frames it answered before closing. */
function poke(address: DataAddress, bytes: Buffer[]): Promise<Message[]> {
  return new Promise((resolve) => {
    const got: Message[] = [];
    const decoder = new FrameDecoder();
    const socket = connect(address.port, address.host, () => {
      for (const b of bytes) socket.write(b);
      socket.end();
    });
    socket.on('data', (c) => {
      try {
        got.push(...decoder.push(c));
      } catch {
        // not our concern here
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => resolve(got));
  });
}

/** A worker's KV listener as the front knows it. */
function kvAddress(cluster: Cluster, id: string): DataAddress {
  const [host, port] = cluster.workers().find((w) => w.id === id)!.kvAddress!.split(':');
  return { host, port: Number(port) };
}

describe('disaggregated serving', { timeout: TEST_LIMIT_MS }, () => {
  const getGpu = useGpu();
  let source: ModelSource;
  let prompts: number[][];
  let expected: number[][];
  // structured output: a regex, greedy and sampled (prompt 0) and a list of strings (prompt 1); the automaton travels with the request
  const PATTERN = '[a-z]{1,6}( [a-z]{1,6}){1,3}\\.';
  let guided: { prompt: number[]; sampling: SamplingOptions; constraint: TokenAutomaton; tokens: number[] }[];

  beforeAll(async () => {
    source = await openModel(DEFAULT_MODEL);
    prompts = PROMPTS.map((p) => source.tokenizer.encode(p));
    const model = GpuModel.load(getGpu(), source, { kvMemoryBytes: 8 << 20 });
    expected = (await generate(model, source.tokenizer, prompts.map((tokens, i) => ({ tokens, options: samplingOf(i, 24) })))).results.map((r) => r.tokens);
    const regex = compileGuide({ kind: 'regex', pattern: PATTERN }, source.tokenizer, false);
    const choice = compileGuide({ kind: 'choice', choices: ['a red ball', 'the big dog', 'cat'] }, source.tokenizer, false);
    const cases = [
      { prompt: prompts[0], sampling: greedy(30), constraint: regex },
      { prompt: prompts[0], sampling: { ...greedy(30), temperature: 1, seed: 9 }, constraint: regex },
      { prompt: prompts[1], sampling: { ...greedy(30), temperature: 1, seed: 4 }, constraint: choice },
    ];
    const colocated = await generate(model, source.tokenizer, cases.map((c) => ({ tokens: c.prompt, options: c.sampling, constraint: c.constraint })));
    guided = cases.map((c, i) => ({ ...c, tokens: colocated.results[i].tokens }));
    model.destroy();
  }, TEST_LIMIT_MS);

  describe('child-process workers', () => {
    let children: ChildProcessPlane;
    let tap: TapPlane;
    let cluster: Cluster;
    const log: string[] = [];
    const worker = (id: string) => cluster.workers().find((w) => w.id === id)!;

    beforeAll(async () => {
      const args = ['--model', DEFAULT_MODEL, '--kv-memory', String(8 << 20)];
      children = new ChildProcessPlane([{ role: 'prefill', args }, { role: 'decode', args }, { role: 'decode', args }]);
      tap = new TapPlane(children);
      cluster = new Cluster({ plane: tap, tokenizer: source.tokenizer, config: source.config, fingerprint: modelFingerprint(source), log: (l) => log.push(l) });
      await cluster.ready({ prefill: 1, decode: 2 }, WORKERS_START_LIMIT_MS);
    }, WORKERS_START_LIMIT_MS + 30_000);
    afterAll(async () => {
      await cluster?.close();
    });

    it('concurrent requests give the colocated outputs, over both decode workers; HTTP, /health and /metrics work', async () => {
      const outcomes = await Promise.all(prompts.map((p, i) => run(cluster, p, samplingOf(i, 24)).done));
      expect(outcomes.map((o) => o.error?.message)).toEqual(outcomes.map(() => undefined));
      expect(outcomes.map((o) => o.tokens)).toEqual(expected);

      const server = await startServer({ engine: cluster, modelId: 'stories260K', port: 0, processMetrics: false });
      try {
        const res = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: PROMPTS[1], max_tokens: 24, temperature: 0 }) });
        const body = (await res.json()) as { choices: { text: string }[] };
        expect(res.status).toBe(200);
        expect(body.choices[0].text).toBe(decode(source.tokenizer, expected[1].filter((t) => t !== source.tokenizer.vocab.eos), prompts[1].at(-1)));

        // every request above was handed over (once, unless a worker was lost meanwhile); a later
        // status round carries the totals (and brings back a worker the loaded machine kept silent
        // past the liveness timeout)
        const handedOver = expected.filter((t) => t.length > 1).length + 1; // a request whose first token ends it is not
        const ids = ['decode-0', 'decode-1', 'prefill-0'];
        await waitFor(() => worker('prefill-0').kvTransfers >= handedOver && ids.every((id) => worker(id).state === 'up'), STATUS_LIMIT_MS, 'the workers report their transfers');
        const health = (await (await fetch(`${server.url}/health`)).json()) as { status: string; workers: { id: string; role: string; state: string; kvTransfers: number; kvBytesSent: number; kvAddress?: string }[] };
        expect(health.status).toBe('ready');
        expect(health.workers.map((w) => `${w.id}:${w.state}`).sort()).toEqual(ids.map((id) => `${id}:up`));
        const prefill = health.workers.find((w) => w.role === 'prefill')!;
        expect(prefill.kvTransfers).toBeGreaterThanOrEqual(handedOver);
        // every handover carries K and V of every layer: 2 * layers * kvHeads * headDim * 4 bytes per context token
        const c = source.config;
        expect(prefill.kvBytesSent).toBeGreaterThanOrEqual(2 * c.nLayers * c.nKvHeads * c.headDim * 4 * prompts.reduce((n, p) => n + p.length, 0));
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        expect(metrics).toMatch(/wgserve_worker_up\{worker="decode-1",role="decode"\} 1/);
        expect(metrics).toMatch(/wgserve_worker_kv_transfer_bytes\{worker="prefill-0",role="prefill"\} [1-9]/);
      } finally {
        await server.close();
      }
    });

    it('structured output: the automaton travels with the request, and the decode worker resumes it from the handed-over tokens: the colocated outputs', async () => {
      const outcomes = await Promise.all(guided.map((g) => run(cluster, g.prompt, g.sampling, g.constraint).done));
      expect(outcomes.map((o) => o.error?.message)).toEqual(outcomes.map(() => undefined));
      expect(outcomes.map((o) => o.tokens)).toEqual(guided.map((g) => g.tokens));
      const text = (i: number) => decode(source.tokenizer, guided[i].tokens, guided[i].prompt.at(-1));
      expect(text(0)).toMatch(new RegExp(`^(?:${PATTERN})$`));
      expect(text(1)).toMatch(new RegExp(`^(?:${PATTERN})$`));
      expect(['a red ball', 'the big dog', 'cat']).toContain(text(2));
      expect(outcomes.map((o) => o.reason)).toEqual(['stop', 'stop', 'stop']);
    });

    it('kill -9 of a decode worker mid-stream: its exit is seen at once, its requests go on elsewhere and finish with their tokens; new requests are served', async () => {
      expect(expected[0]).toHaveLength(24); // no early end: a request adopted by decode-0 has 20-odd tokens to go when it dies
      // both decode workers idle, as their statuses say, so placement spreads the requests over both
      await waitFor(() => ['decode-0', 'decode-1'].every((id) => worker(id).kvBlocksUsed === 0 && worker(id).running === 0), STATUS_LIMIT_MS, 'decode workers report idle');
      const runs = Array.from({ length: 3 }, () => run(cluster, prompts[0], samplingOf(0, 24)));
      await tap.adopted('decode-0', runs.map((r) => r.handle.id));
      process.kill(children.pid('decode-0')!, 'SIGKILL');
      const outcomes = await Promise.all(runs.map((r) => r.done));
      expect(outcomes.map((o) => o.error?.message)).toEqual(outcomes.map(() => undefined));
      expect(outcomes.map((o) => o.tokens)).toEqual(runs.map(() => expected[0]));
      // seen through its process (its exit, or the IPC write that failed first), not only after the heartbeat timeout
      expect(tap.gone[0]).toEqual({ id: 'decode-0', reason: expect.stringMatching(/^process (exited \(SIGKILL\)|error: write EPIPE)$/) });
      expect(cluster.counters.redispatches).toBeGreaterThan(0);
      expect(worker('decode-0').state).toBe('lost');
      const after = await run(cluster, prompts[3], samplingOf(3, 24)).done;
      expect(after.tokens).toEqual(expected[3]);
    });
  });

  it('`wgserve serve --disaggregate` as a user runs it: serves the colocated output, and SIGTERM stops the front and its workers', async () => {
    const workerTimeoutS = WORKERS_START_LIMIT_MS / 1000;
    const proc = spawn(process.execPath, [join(repoRoot, 'bin', 'wgserve.mjs'), 'serve', '--disaggregate', '--prefill-workers', '1', '--decode-workers', '1', '--port', '0', '--kv-memory', String(8 << 20), '--worker-timeout', String(workerTimeoutS)], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
    try {
      const printed = /wgserve: serving .* on 1 prefill \+ 1 decode workers at (http:\/\/[\w.:[\]-]+)/;
      // serving, or exited (the CLI gives up on its workers after --worker-timeout and says why)
      await waitFor(() => printed.test(out) || proc.exitCode !== null, workerTimeoutS * 1000 + STATUS_LIMIT_MS, () => `serve --disaggregate starts:\n${out}`);
      expect(out).toMatch(printed);
      const url = printed.exec(out)![1];
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: PROMPTS[0], max_tokens: 24, temperature: 0 }) });
      expect(res.status, out).toBe(200);
      expect(((await res.json()) as { choices: { text: string }[] }).choices[0].text, out).toBe(decode(source.tokenizer, expected[0].filter((t) => t !== source.tokenizer.vocab.eos), prompts[0].at(-1)));
      // its worker processes (tsx may have an esbuild service beside them)
      const children = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(proc.pid)], { encoding: 'utf8' })
        .split('\n')
        .filter((line) => / worker --role /.test(line))
        .map((line) => Number.parseInt(line, 10));
      expect(children, out).toHaveLength(2);
      proc.kill('SIGTERM');
      expect(await exited, out).toBe(0);
      const alive = (pid: number) => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      };
      expect(children.filter(alive), out).toEqual([]);
    } finally {
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
  });

  describe('workers found through NATS', () => {
    let nats: NatsServerProcess;
    let tap: TapPlane;
    let cluster: Cluster;
    const workers = new Map<string, WorkerProcess>();
    const log: string[] = [];
    const worker = (id: string) => cluster.workers().find((w) => w.id === id)!;
    /**
     * The decode worker's limit on silence mid-sequence: 3x the longest gap measured between a
     * normal handover's frames here (3.2 s, with a CPU hog beside the suite: the frames of a
     * batched prefill step wait for that step), and short enough to wait for.
     */
    const TRANSFER_TIMEOUT_S = 10;

    beforeAll(async () => {
      nats = await startNatsServer();
      tap = new TapPlane(await natsControlPlane(nats.url));
      cluster = new Cluster({ plane: tap, tokenizer: source.tokenizer, config: source.config, fingerprint: modelFingerprint(source), log: (l) => log.push(l) });
      const common = ['--nats', nats.url, '--kv-memory', String(8 << 20), '--data-host', '127.0.0.1', '--model', DEFAULT_MODEL];
      for (const [id, role, ...extra] of [['nats-prefill', 'prefill'], ['nats-prefill-2', 'prefill'], ['nats-decode', 'decode', '--transfer-timeout', String(TRANSFER_TIMEOUT_S)]]) {
        workers.set(id, workerProcess(['--role', role, '--id', id, ...common, ...extra]));
      }
      await cluster.ready({ prefill: 2, decode: 1 }, WORKERS_START_LIMIT_MS);
    }, WORKERS_START_LIMIT_MS + 30_000);
    afterAll(async () => {
      for (const w of workers.values()) w.kill('SIGKILL');
      await cluster?.close();
      await nats?.stop();
    });

    it('concurrent requests give the colocated outputs', async () => {
      const outcomes = await Promise.all(prompts.map((p, i) => run(cluster, p, samplingOf(i, 24)).done));
      expect(outcomes.map((o) => o.tokens)).toEqual(expected);
    });

    it('a worker started with a different model file is refused, at registration and at the KV hello', async () => {
      // refused at registration: it never serves, so it skips the warm-up (--no-warmup)
      const wrong = workerProcess(['--role', 'prefill', '--id', 'wrong-model', '--model', join(repoRoot, 'models', 'stories260K', 'stories260K-Q8_0.gguf'), '--nats', nats.url, '--no-warmup']);
      workers.set('wrong-model', wrong);
      expect(await within(wrong.exited, WORKERS_START_LIMIT_MS, () => `the refused worker exits; its log:\n${wrong.log.join('\n')}`)).toBe(1);
      expect(log.some((l) => l.startsWith('refused worker wrong-model') && l.includes('fingerprint'))).toBe(true);
      expect(cluster.workers().map((w) => w.id)).not.toContain('wrong-model');

      const address = kvAddress(cluster, 'nats-decode');
      const q8 = await openModel(join(repoRoot, 'models', 'stories260K', 'stories260K-Q8_0.gguf'));
      const answer = await within(poke(address, [encodeFrame({ type: 'hello', version: PROTOCOL_VERSION, role: 'prefill', workerId: 'intruder', fingerprint: modelFingerprint(q8) })]), STATUS_LIMIT_MS, 'the decode worker answers a hello of another model');
      expect(answer).toHaveLength(1);
      expect(answer[0].type).toBe('refuse');
      expect((answer[0] as { reason: string }).reason).toMatch(/fingerprint/);
      const oldVersion = await within(poke(address, [encodeFrame({ type: 'hello', version: PROTOCOL_VERSION + 1, role: 'prefill', workerId: 'future', fingerprint: modelFingerprint(source) })]), STATUS_LIMIT_MS, 'the decode worker answers a hello of another version');
      expect(oldVersion[0]?.type).toBe('refuse');
    });

    it('fuzzed frames (random bytes, truncated and oversize lengths, nonsense after a valid hello) never crash the decode worker', async () => {
      const decodeProc = workers.get('nats-decode')!;
      const address = kvAddress(cluster, 'nats-decode');
      const hello = encodeFrame({ type: 'hello', version: PROTOCOL_VERSION, role: 'prefill', workerId: 'fuzzer', fingerprint: modelFingerprint(source) });
      const rand = mulberry32(9);
      const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
      const oversize = Buffer.alloc(8);
      oversize.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
      const kv = (rows: number, size: number) => encodeFrame({ type: 'kv', seq: 1, layer: 0, start: 0, rows, k: new Uint8Array(size), v: new Uint8Array(size) });
      const cases: Buffer[][] = [
        [bytes(1)],
        [bytes(300)],
        [oversize],
        [hello.subarray(0, 7)], // truncated, then the connection ends
        [hello, bytes(64)],
        [hello, oversize],
        [hello, kv(2, 64)], // kv without kv-begin
        [hello, encodeFrame({ type: 'kv-begin', seq: 1, tokens: 2, rows: 8 }), kv(2, 7)], // wrong size
        [hello, encodeFrame({ type: 'kv-begin', seq: 1, tokens: 2, rows: 8 }), encodeFrame({ type: 'kv-begin', seq: 1, tokens: 2, rows: 8 })],
        [hello, encodeFrame({ type: 'kv-begin', seq: 1, tokens: 3, rows: 12 }), encodeFrame({ type: 'kv-done', seq: 1, tokens: 3, request: { rid: 1, attempt: 1, prompt: [1, 2], generated: [3], sampling: greedy(4) } })], // done before its layers
        [hello, encodeFrame({ type: 'ack', seq: 1 })],
      ];
      for (let i = 0; i < 40; i++) cases.push([hello, bytes(1 + Math.floor(rand() * 200))]);
      await Promise.all(cases.map((c) => poke(address, c)));
      // each bad connection was closed with its reason in the worker's log (a valid hello then a
      // valid-looking ack-less close may end quietly)
      const closed = () => decodeProc.log.filter((l) => l.includes('KV connection from'));
      await waitFor(() => closed().length >= cases.length - 2, STATUS_LIMIT_MS, () => `closed connections logged (${closed().length} of ${cases.length})`);
      expect(closed().some((l) => /exceeds/.test(l))).toBe(true);
      expect(closed().some((l) => /without kv-begin/.test(l))).toBe(true);
      expect(closed().some((l) => /ended inside a frame/.test(l))).toBe(true);
      // alive and answering: two status rounds after the fuzz
      const mark = tap.statuses('nats-decode');
      await waitFor(() => tap.statuses('nats-decode') >= mark + 2, STATUS_LIMIT_MS, 'the decode worker reports after the fuzz');
      expect(decodeProc.exitCode).toBeNull();
      expect(worker('nats-decode').state).toBe('up');
      expect(worker('nats-decode').kvBlocksUsed).toBe(0); // what the half-sent sequences reserved is free
      const after = await run(cluster, prompts[2], samplingOf(2, 24)).done;
      expect(after.tokens).toEqual(expected[2]);
    });

    it('a NATS broker restart: the front and every worker reconnect and stay registered; a request streaming across it and requests after it give the colocated outputs', async () => {
      const ids = ['nats-prefill', 'nats-prefill-2', 'nats-decode'];
      expect(expected[0]).toHaveLength(24); // still streaming when the broker goes: 20-odd tokens to go after its adoption
      const streaming = run(cluster, prompts[0], samplingOf(0, 24));
      await tap.adopted('nats-decode', [streaming.handle.id]);
      await nats.stop();
      nats = await startNatsServer({ port: nats.port });
      // a status after the restart came through the new broker: that worker and the front are back on it
      const mark = new Map(ids.map((id) => [id, tap.statuses(id)]));
      await waitFor(() => ids.every((id) => tap.statuses(id) > mark.get(id)!), STATUS_LIMIT_MS, 'every worker heard through the new broker');
      expect(ids.map((id) => worker(id).state)).toEqual(ids.map(() => 'up'));
      const across = await streaming.done;
      expect(log).toContain('control link back: dispatching the requests in flight again');
      expect(across.error?.message).toBeUndefined();
      expect(across.tokens).toEqual(expected[0]);
      const outcomes = await Promise.all([1, 2, 3].map((i) => run(cluster, prompts[i], samplingOf(i, 24)).done));
      expect(outcomes.map((o) => o.tokens)).toEqual(expected.slice(1, 4));
    });

    /**
     * Holds a handover still after its first KV frame (a relay between the prefill worker and the
     * decode worker's KV port), until the decode worker's status shows the blocks it reserved.
     * Returns the request and the prefill worker it went to.
     */
    async function stallHandover(i: number) {
      const decodeAddress = kvAddress(cluster, 'nats-decode');
      await waitFor(() => worker('nats-decode').kvBlocksUsed === 0, STATUS_LIMIT_MS, 'the decode worker reports no KV in use');
      const { relay, address } = await KvRelay.start(decodeAddress, (m) => m.type === 'kv');
      const dispatched = tap.redirectNext(address);
      const request = run(cluster, prompts[i], samplingOf(i, 24));
      const { worker: prefillId } = await dispatched;
      await relay.holding;
      expect(relay.passed.map((m) => m.type)).toEqual(['hello', 'kv-begin', 'kv']);
      await waitFor(() => worker('nats-decode').kvBlocksUsed > 0, STATUS_LIMIT_MS, 'the decode worker reports the blocks of the partial import');
      return { relay, request, prefill: workers.get(prefillId)!, prefillId };
    }

    it('a KV transfer stalled mid-sequence (its prefill worker stopped): the request goes on elsewhere; the decode worker gives up after --transfer-timeout and frees the KV', async () => {
      const frontMark = log.length;
      const decodeLog = workers.get('nats-decode')!.log;
      const decodeMark = decodeLog.length;
      const { relay, request, prefill, prefillId } = await stallHandover(5);
      prefill.kill('SIGSTOP');
      try {
        // lost after the liveness timeout, dispatched again to the other prefill worker
        const o = await request.done;
        expect(o.error?.message).toBeUndefined();
        expect(o.tokens).toEqual(expected[5]);
        expect(log.slice(frontMark).some((l) => l.startsWith(`worker ${prefillId} (prefill) lost: no status`))).toBe(true);
        // the stalled connection is closed by the decode worker's own timer (its peer cannot close it) ...
        const timedOut = () => decodeLog.slice(decodeMark).filter((l) => l.includes(`no KV data for ${TRANSFER_TIMEOUT_S} s`));
        await waitFor(() => timedOut().length > 0, SLACK * TRANSFER_TIMEOUT_S * 1000, 'the decode worker times the transfer out');
        // ... and the blocks it reserved are free again
        await waitFor(() => worker('nats-decode').kvBlocksUsed === 0, STATUS_LIMIT_MS, 'the decode worker frees the partial import');
      } finally {
        prefill.kill('SIGCONT');
        await relay.close();
      }
      await waitFor(() => worker(prefillId).state === 'up', STATUS_LIMIT_MS, 'the stopped worker is taken back');
    });

    it('kill -9 of a prefill worker mid-handover: the request is dispatched again and finishes with its tokens; the decode worker frees the partial import', async () => {
      const frontMark = log.length;
      const decodeLog = workers.get('nats-decode')!.log;
      const decodeMark = decodeLog.length;
      const { relay, request, prefill, prefillId } = await stallHandover(6);
      prefill.kill('SIGKILL');
      try {
        const o = await request.done;
        expect(o.error?.message).toBeUndefined();
        expect(o.tokens).toEqual(expected[6]);
        expect(log.slice(frontMark).some((l) => l.startsWith(`worker ${prefillId} (prefill) lost`))).toBe(true);
        await waitFor(() => worker('nats-decode').kvBlocksUsed === 0, STATUS_LIMIT_MS, 'the decode worker frees the partial import');
      } finally {
        await relay.close();
      }
      // freed when the connection ended, not by the transfer timeout
      expect(decodeLog.slice(decodeMark).filter((l) => l.includes('no KV data for'))).toEqual([]);
    });

    it('a worker that stops answering (SIGSTOP) is lost within the liveness timeout: its streams end with an error, none hangs; it is taken back when it answers again', async () => {
      const decodeProc = workers.get('nats-decode')!;
      const runs = Array.from({ length: 2 }, () => run(cluster, prompts[0], samplingOf(0, 24)));
      await tap.adopted('nats-decode', runs.map((r) => r.handle.id));
      decodeProc.kill('SIGSTOP');
      try {
        // the only decode worker is gone: an error, once the front declares it lost
        const outcomes = await within(Promise.all(runs.map((r) => r.done)), LOSS_LIMIT_MS, 'the streams end after the decode worker stopped');
        for (const o of outcomes) {
          expect(o.reason).toBe('error');
          expect(o.error?.message).toMatch(/no decode worker is left/);
        }
        expect(worker('nats-decode').state).toBe('lost');
      } finally {
        decodeProc.kill('SIGCONT');
      }
      await waitFor(() => worker('nats-decode').state === 'up', STATUS_LIMIT_MS, 'the stopped worker is taken back');
      expect(log.some((l) => /nats-decode is answering again/.test(l))).toBe(true);
      const after = await run(cluster, prompts[4], samplingOf(4, 24)).done;
      expect(after.tokens).toEqual(expected[4]);
    });
  });
});
