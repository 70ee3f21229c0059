import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EngineHandle, FinishReason, SamplingOptions } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { decode } from '../src/model/tokenizer/index.ts';
import { startServer } from '../src/server/app.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { Cluster } from '../src/workers/cluster.ts';
import { ChildProcessPlane, type ControlPlane } from '../src/workers/control.ts';
import { natsControlPlane } from '../src/workers/nats_link.ts';
import { type NatsServerProcess, startNatsServer } from '../src/workers/nats_server.ts';
import { FrameDecoder, MAX_FRAME_BYTES, type Message, PROTOCOL_VERSION, encodeFrame, modelFingerprint } from '../src/workers/protocol.ts';
import { useGpu } from './helpers/gpu.ts';

/**
 * Disaggregated serving with real worker processes (each with its own software WebGPU device),
 * real TCP KV transfer and a real nats-server: outputs equal colocated serving; a decode worker
 * killed mid-stream costs no request more than a few seconds; a worker of another model is
 * refused; fuzzed data-plane input closes only its own connection.
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
  /** performance.now() of every token and of the finish */
  times: number[];
  finishedAt: number;
}

function run(cluster: Cluster, prompt: number[], sampling: SamplingOptions): { handle: EngineHandle; done: Promise<Outcome> } {
  const tokens: number[] = [];
  const times: number[] = [];
  let handle!: EngineHandle;
  const done = new Promise<Outcome>((resolve) => {
    handle = cluster.submit({
      prompt,
      sampling,
      events: {
        onToken: (e) => {
          tokens.push(e.token);
          times.push(performance.now());
        },
        onFinish: (reason, _usage, error) => resolve({ tokens, reason, error, times, finishedAt: performance.now() }),
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

/** Sends `bytes` to a decode worker's KV port and returns the frames it answered before closing. */
function poke(address: string, bytes: Buffer[], waitMs = 300): Promise<Message[]> {
  const [host, port] = address.split(':');
  return new Promise((resolve) => {
    const got: Message[] = [];
    const decoder = new FrameDecoder();
    const socket = connect(Number(port), host, () => {
      for (const b of bytes) socket.write(b);
      setTimeout(() => socket.end(), waitMs);
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

describe('disaggregated serving', () => {
  const getGpu = useGpu();
  let source: ModelSource;
  let prompts: number[][];
  let expected: number[][];
  let expectedLong: number[];

  beforeAll(async () => {
    source = await openModel(DEFAULT_MODEL);
    prompts = PROMPTS.map((p) => source.tokenizer.encode(p));
    const model = GpuModel.load(getGpu(), source, { kvMemoryBytes: 8 << 20 });
    expected = (await generate(model, source.tokenizer, prompts.map((tokens, i) => ({ tokens, options: samplingOf(i, 24) })))).results.map((r) => r.tokens);
    expectedLong = (await generate(model, source.tokenizer, [{ tokens: prompts[0], options: greedy(64) }])).results[0].tokens;
    model.destroy();
  });

  describe('child-process workers', () => {
    let plane: ChildProcessPlane;
    let cluster: Cluster;
    const log: string[] = [];

    beforeAll(async () => {
      const args = ['--model', DEFAULT_MODEL, '--kv-memory', String(8 << 20)];
      plane = new ChildProcessPlane([{ role: 'prefill', args }, { role: 'decode', args }, { role: 'decode', args }]);
      cluster = new Cluster({ plane, tokenizer: source.tokenizer, config: source.config, fingerprint: modelFingerprint(source), log: (l) => log.push(l) });
      await cluster.ready({ prefill: 1, decode: 2 }, 90_000);
    });
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
        expect(body.choices[0].text).toBe(decode(source.tokenizer, expected[1].filter((t) => t !== source.tokenizer.vocab.eos)));

        await new Promise((r) => setTimeout(r, 700)); // a status round carries the latest transfer totals
        const health = (await (await fetch(`${server.url}/health`)).json()) as { status: string; workers: { id: string; role: string; state: string; kvTransfers: number; kvBytesSent: number; kvAddress?: string }[] };
        expect(health.status).toBe('ready');
        expect(health.workers.map((w) => `${w.id}:${w.state}`).sort()).toEqual(['decode-0:up', 'decode-1:up', 'prefill-0:up']);
        const prefill = health.workers.find((w) => w.role === 'prefill')!;
        expect(prefill.kvTransfers).toBeGreaterThanOrEqual(PROMPTS.length);
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

    it('kill -9 of a decode worker mid-stream: its requests go on elsewhere within 5 s and finish; new requests are served', async () => {
      const runs = Array.from({ length: 3 }, () => run(cluster, prompts[0], greedy(64)));
      // wait until every request streams from a decode worker
      const deadline = performance.now() + 60_000;
      while (cluster.workers().find((w) => w.id === 'decode-0')!.running === 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 300));
      const killedAt = performance.now();
      process.kill(plane.pid('decode-0')!, 'SIGKILL');
      const outcomes = await Promise.all(runs.map((r) => r.done));
      for (const o of outcomes) {
        // nothing hangs: the first event after the kill (a token from elsewhere, or the end) comes within 5 s
        const next = [...o.times, o.finishedAt].find((t) => t > killedAt)!;
        expect(next - killedAt).toBeLessThan(5000);
        if (o.reason === 'error') expect(o.finishedAt - killedAt).toBeLessThan(5000);
        else expect(o.tokens).toEqual(expectedLong);
      }
      expect(outcomes.filter((o) => o.reason !== 'error').length).toBeGreaterThan(0);
      expect(log.some((l) => /decode-0 .*lost/.test(l))).toBe(true);
      expect(cluster.counters.redispatches).toBeGreaterThan(0); // at least one request moved off the killed worker
      expect(cluster.workers().find((w) => w.id === 'decode-0')!.state).toBe('lost');
      const after = await run(cluster, prompts[3], samplingOf(3, 24)).done;
      expect(after.tokens).toEqual(expected[3]);
    });
  });

  it('`wgserve serve --disaggregate` as a user runs it: serves the colocated output, and SIGTERM stops the front and its workers', async () => {
    const proc = spawn(process.execPath, [join(repoRoot, 'bin', 'wgserve.mjs'), 'serve', '--disaggregate', '--prefill-workers', '1', '--decode-workers', '1', '--port', '0', '--kv-memory', String(8 << 20)], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
    try {
      const printed = /wgserve: serving .* on 1 prefill \+ 1 decode workers at (http:\/\/[\w.:[\]-]+)/;
      const deadline = performance.now() + 90_000;
      while (!printed.test(out) && performance.now() < deadline && proc.exitCode === null) await new Promise((r) => setTimeout(r, 100));
      expect(out).toMatch(printed);
      const url = printed.exec(out)![1];
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: PROMPTS[0], max_tokens: 24, temperature: 0 }) });
      expect(res.status, out).toBe(200);
      expect(((await res.json()) as { choices: { text: string }[] }).choices[0].text, out).toBe(decode(source.tokenizer, expected[0].filter((t) => t !== source.tokenizer.vocab.eos)));
      const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(proc.pid)], { encoding: 'utf8' }).split('\n').map(Number).filter((n) => n > 0);
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
    let plane: ControlPlane;
    let cluster: Cluster;
    const workers: WorkerProcess[] = [];
    const log: string[] = [];

    beforeAll(async () => {
      nats = await startNatsServer();
      plane = await natsControlPlane(nats.url);
      cluster = new Cluster({ plane, tokenizer: source.tokenizer, config: source.config, fingerprint: modelFingerprint(source), log: (l) => log.push(l) });
      const common = ['--nats', nats.url, '--kv-memory', String(8 << 20), '--data-host', '127.0.0.1'];
      workers.push(workerProcess(['--role', 'prefill', '--id', 'nats-prefill', '--model', DEFAULT_MODEL, ...common]));
      workers.push(workerProcess(['--role', 'decode', '--id', 'nats-decode', '--model', DEFAULT_MODEL, ...common]));
      await cluster.ready({ prefill: 1, decode: 1 }, 90_000);
    });
    afterAll(async () => {
      for (const w of workers) w.kill('SIGKILL');
      await cluster?.close();
      await nats?.stop();
    });

    it('concurrent requests give the colocated outputs', async () => {
      const outcomes = await Promise.all(prompts.map((p, i) => run(cluster, p, samplingOf(i, 24)).done));
      expect(outcomes.map((o) => o.tokens)).toEqual(expected);
    });

    it('a worker started with a different model file is refused, at registration and at the KV hello', async () => {
      const wrong = workerProcess(['--role', 'prefill', '--id', 'wrong-model', '--model', join(repoRoot, 'models', 'stories260K', 'stories260K-Q8_0.gguf'), '--nats', nats.url]);
      workers.push(wrong);
      expect(await wrong.exited).toBe(1);
      expect(log.some((l) => l.startsWith('refused worker wrong-model') && l.includes('fingerprint'))).toBe(true);
      expect(cluster.workers().map((w) => w.id)).not.toContain('wrong-model');

      const address = cluster.workers().find((w) => w.role === 'decode')!.kvAddress!;
      const q8 = await openModel(join(repoRoot, 'models', 'stories260K', 'stories260K-Q8_0.gguf'));
      const answer = await poke(address, [encodeFrame({ type: 'hello', version: PROTOCOL_VERSION, role: 'prefill', workerId: 'intruder', fingerprint: modelFingerprint(q8) })]);
      expect(answer).toHaveLength(1);
      expect(answer[0].type).toBe('refuse');
      expect((answer[0] as { reason: string }).reason).toMatch(/fingerprint/);
      const oldVersion = await poke(address, [encodeFrame({ type: 'hello', version: PROTOCOL_VERSION + 1, role: 'prefill', workerId: 'future', fingerprint: modelFingerprint(source) })]);
      expect(oldVersion[0]?.type).toBe('refuse');
    });

    it('fuzzed frames (random bytes, truncated and oversize lengths, nonsense after a valid hello) never crash the decode worker', async () => {
      const address = cluster.workers().find((w) => w.role === 'decode')!.kvAddress!;
      const hello = encodeFrame({ type: 'hello', version: PROTOCOL_VERSION, role: 'prefill', workerId: 'fuzzer', fingerprint: modelFingerprint(source) });
      const rand = mulberry32(9);
      const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
      const oversize = Buffer.alloc(8);
      oversize.writeUInt32BE(MAX_FRAME_BYTES + 1, 0);
      const kv = (tokens: number, size: number) => encodeFrame({ type: 'kv', seq: 1, layer: 0, start: 0, tokens, k: new Uint8Array(size), v: new Uint8Array(size) });
      const cases: Buffer[][] = [
        [bytes(1)],
        [bytes(300)],
        [oversize],
        [hello.subarray(0, 7)], // truncated, then the connection ends
        [hello, bytes(64)],
        [hello, oversize],
        [hello, kv(2, 64)], // kv without kv-begin
        [hello, encodeFrame({ type: 'kv-begin', seq: 1, tokens: 2 }), kv(2, 7)], // wrong size
        [hello, encodeFrame({ type: 'kv-begin', seq: 1, tokens: 2 }), encodeFrame({ type: 'kv-begin', seq: 1, tokens: 2 })],
        [hello, encodeFrame({ type: 'kv-begin', seq: 1, tokens: 3 }), encodeFrame({ type: 'kv-done', seq: 1, tokens: 3, request: { rid: 1, attempt: 1, prompt: [1, 2], generated: [3], sampling: greedy(4) } })], // done before its layers
        [hello, encodeFrame({ type: 'ack', seq: 1 })],
      ];
      for (let i = 0; i < 40; i++) cases.push([hello, bytes(1 + Math.floor(rand() * 200))]);
      await Promise.all(cases.map((c) => poke(address, c, 100)));
      await new Promise((r) => setTimeout(r, 1200)); // more than two status rounds
      expect(workers[1].exitCode).toBeNull();
      // each bad connection was closed with its reason in the worker's log
      const closed = workers[1].log.filter((l) => l.includes('KV connection from'));
      expect(closed.length).toBeGreaterThanOrEqual(cases.length - 2); // a valid hello then a valid-looking ack-less close may end quietly
      expect(closed.some((l) => /exceeds/.test(l))).toBe(true);
      expect(closed.some((l) => /without kv-begin/.test(l))).toBe(true);
      expect(closed.some((l) => /ended inside a frame/.test(l))).toBe(true);
      expect(cluster.workers().find((w) => w.id === 'nats-decode')!.state).toBe('up');
      const after = await run(cluster, prompts[2], samplingOf(2, 24)).done;
      expect(after.tokens).toEqual(expected[2]);
    });

    it('a worker that stops answering (SIGSTOP) is lost within seconds: its streams end with an error, none hangs; it is taken back when it answers again', async () => {
      const decode = workers[1];
      const runs = Array.from({ length: 2 }, () => run(cluster, prompts[0], greedy(64)));
      const deadline = performance.now() + 60_000;
      while (cluster.workers().find((w) => w.id === 'nats-decode')!.running === 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const stoppedAt = performance.now();
      decode.kill('SIGSTOP');
      try {
        const outcomes = await Promise.all(runs.map((r) => r.done));
        for (const o of outcomes) {
          // the only decode worker is gone: an error, within the liveness timeout plus a status round
          expect(o.reason).toBe('error');
          expect(o.error?.message).toMatch(/no decode worker is left/);
          expect(o.finishedAt - stoppedAt).toBeLessThan(5000);
        }
        expect(cluster.workers().find((w) => w.id === 'nats-decode')!.state).toBe('lost');
      } finally {
        decode.kill('SIGCONT');
      }
      const back = performance.now() + 10_000;
      while (cluster.workers().find((w) => w.id === 'nats-decode')!.state !== 'up' && performance.now() < back) await new Promise((r) => setTimeout(r, 50));
      expect(log.some((l) => /nats-decode is answering again/.test(l))).toBe(true);
      const after = await run(cluster, prompts[4], samplingOf(4, 24)).done;
      expect(after.tokens).toEqual(expected[4]);
    });
  });
});
