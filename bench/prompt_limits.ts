/**
 * Huge prompts against a running server (issue 10, item 4): how fast they are refused, and how
 * much they stall a stream that runs meanwhile.
 *
 *     node bin/wgserve.mjs serve --port 8099 &
 *     npx tsx bench/prompt_limits.ts --url http://127.0.0.1:8099 [--concurrency 8] [--near-bytes 14000]
 *
 * One stream runs throughout (min_tokens keeps it going; it is cancelled at the end). Then, in
 * turn: a quiet window (the baseline), `--concurrency` prompts of 1 MB at once (refused from their
 * size), and as many of `--near-bytes` (small enough to pass that test, too many tokens: tokenized
 * in slices up to the context). For each: the refusals' latency, the server's largest event-loop
 * delay (`nodejs_eventloop_lag_max_seconds`, which each scrape resets) and the stream's largest
 * gap between chunks in the window. In-process, for comparison, the same tokenizer's one-pass time
 * for those prompts (what the server did before: tokenize in full, then check) and its largest
 * slice.
 */
import { join } from 'node:path';
import { repoRoot } from '../src/gpu/paths.ts';
import { openTokenizer } from '../src/model/source.ts';
import { SLICE_CHARS } from '../src/model/tokenizer/index.ts';

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const url = arg('url', 'http://127.0.0.1:8099').replace(/\/v1\/?$/, '');
const concurrency = Number(arg('concurrency', '8'));
const nearBytes = Number(arg('near-bytes', '14000'));
const tokenizerModel = arg('tokenizer-model', join(repoRoot, 'models', 'stories260K', 'stories260K.gguf'));

const SENTENCE = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. ';
const prose = (chars: number) => SENTENCE.repeat(Math.ceil(chars / SENTENCE.length)).slice(0, chars);

async function loopLagMs(): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('nodejs_eventloop_lag_max_seconds '));
  return line ? Number(line.split(' ')[1]) * 1000 : NaN;
}

const model = ((await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] }).data[0].id;

// the stream: chunk arrival times
const arrivals: number[] = [];
const abort = new AbortController();
const stream = fetch(`${url}/v1/completions`, {
  method: 'POST',
  signal: abort.signal,
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ model, prompt: 'Once upon a time', max_tokens: 2000, min_tokens: 2000, stream: true }),
}).then(async (res) => {
  for await (const _ of res.body!) arrivals.push(performance.now());
}).catch(() => {});
while (arrivals.length < 3) await new Promise((r) => setTimeout(r, 20));

const maxGap = (from: number, to: number) => {
  const inside = arrivals.filter((t) => t >= from && t <= to);
  let gap = 0;
  for (let i = 1; i < inside.length; i++) gap = Math.max(gap, inside[i] - inside[i - 1]);
  return gap;
};
const percentile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

interface Row {
  what: string;
  status: string;
  p50: number;
  max: number;
  lag: number;
  gap: number;
}
const rows: Row[] = [];

async function phase(what: string, prompt: string | null): Promise<void> {
  await loopLagMs(); // resets the server's maximum
  const t0 = performance.now();
  const latencies: number[] = [];
  const statuses = new Set<number>();
  if (prompt === null) await new Promise((r) => setTimeout(r, 3000));
  else {
    const body = JSON.stringify({ model, prompt, max_tokens: 1 });
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        const s = performance.now();
        const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
        await res.text();
        statuses.add(res.status);
        latencies.push(performance.now() - s);
      }),
    );
    await new Promise((r) => setTimeout(r, 1000)); // a chunk or more after the burst, for the gap
  }
  const t1 = performance.now();
  rows.push({ what, status: [...statuses].join(',') || '-', p50: latencies.length ? percentile(latencies, 0.5) : NaN, max: latencies.length ? Math.max(...latencies) : NaN, lag: await loopLagMs(), gap: maxGap(t0, t1) });
}

await phase('quiet (baseline)', null);
await phase(`${concurrency} x 1 MB`, prose(1e6));
await phase(`${concurrency} x ${nearBytes} B`, prose(nearBytes));
abort.abort();
await stream;

const f = (x: number) => (Number.isNaN(x) ? '-' : x.toFixed(0));
console.log(`server ${url}, model ${model}; a stream ran throughout (${arrivals.length} chunks)\n`);
console.log('| prompts | status | latency p50 / max ms | server event-loop delay max ms | stream gap max ms |');
console.log('|---|---|---:|---:|---:|');
for (const r of rows) console.log(`| ${r.what} | ${r.status} | ${f(r.p50)} / ${f(r.max)} | ${f(r.lag)} | ${f(r.gap)} |`);

const tok = await openTokenizer(tokenizerModel);
console.log(`\nin-process, ${tokenizerModel.split('/').pop()}:\n`);
console.log('| prompt | one pass ms | least-token bound ms | largest slice ms |');
console.log('|---|---:|---:|---:|');
for (const text of [prose(1e6), prose(nearBytes)]) {
  let t = performance.now();
  tok.encode(text, { parseSpecial: true });
  const once = performance.now() - t;
  t = performance.now();
  tok.minTokens?.(text);
  const bound = performance.now() - t;
  let slice = 0;
  const it = tok.encodeSlices!(text, { parseSpecial: true }, SLICE_CHARS);
  for (;;) {
    t = performance.now();
    if (it.next().done) break;
    slice = Math.max(slice, performance.now() - t);
  }
  console.log(`| ${text.length} B | ${once.toFixed(0)} | ${bound.toFixed(2)} | ${slice.toFixed(1)} |`);
}
process.exit(0);
