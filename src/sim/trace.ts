import { readFileSync } from 'node:fs';
import { basename, extname } from 'node:path';

/**
 * Request traces: when each request arrives and how many tokens it reads and writes.
 *
 * Formats read:
 * - the Azure LLM inference trace CSV (columns TIMESTAMP, ContextTokens, GeneratedTokens, the
 *   timestamp absolute text such as `2023-11-16 18:17:03.9799600`, 100 ns resolution);
 * - a generic CSV with a header naming an arrival column, an input-token column and an
 *   output-token column (names below; the arrival either seconds as a number or a date-time);
 * - JSONL, one object per line with the same keys.
 *
 * Arrivals are made relative to the earliest one (seconds, >= 0) and sorted stably, so requests
 * that share a timestamp keep their file order and all stay in the trace. Standalone: the load
 * generator (bench/serve.ts) and the simulator (src/sim/simulator.ts) both read traces through this module.
 */

export interface TraceRequest {
  /** seconds after the trace's first arrival */
  arrival: number;
  /** prompt tokens */
  inputTokens: number;
  /** generated tokens */
  outputTokens: number;
}

export interface Trace {
  /** file name or another label */
  name: string;
  requests: TraceRequest[];
}

export type TraceFormat = 'csv' | 'jsonl';

/** Column (or JSON key) names accepted for each field, compared case- and punctuation-insensitively. */
const ARRIVAL_KEYS = ['timestamp', 'arrival', 'arrivaltime', 'arrivals', 'time', 'ts', 'starttime', 'arrivaltimestamp'];
const INPUT_KEYS = ['contexttokens', 'inputtokens', 'prompttokens', 'inputlen', 'inputlength', 'promptlen', 'promptlength', 'input', 'prompt', 'numprompttokens'];
const OUTPUT_KEYS = ['generatedtokens', 'outputtokens', 'completiontokens', 'outputlen', 'outputlength', 'generatedlen', 'output', 'completion', 'numcompletiontokens'];

const normKey = (k: string) => k.toLowerCase().replace(/[^a-z0-9]/g, '');

export class TraceError extends Error {
  override name = 'TraceError';
}

/**
 * An arrival time as [whole seconds, 100 ns ticks within the second]: epoch seconds times 10^7
 * would not fit a double exactly, so the two parts are kept apart until they are made relative.
 */
type Instant = [seconds: number, ticks: number];

const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$/;

/**
 * Parses a date-time such as `2023-11-16 18:17:03.9799600` (Azure's form; a `T` separator, more
 * or fewer fraction digits and a `Z` / `+hh:mm` offset are accepted too; no offset reads as UTC).
 * Fractions beyond 100 ns are truncated.
 */
export function parseTimestamp(text: string): Instant {
  const m = DATE_TIME.exec(text.trim());
  if (!m) throw new TraceError(`not a date-time: ${JSON.stringify(text)}`);
  const [, y, mo, d, h, mi, s, frac = '', zone] = m;
  let seconds = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s) / 1000;
  if (!Number.isFinite(seconds) || +mo < 1 || +mo > 12 || +d < 1 || +d > 31 || +h > 23 || +mi > 59 || +s > 60) {
    throw new TraceError(`not a valid date-time: ${JSON.stringify(text)}`);
  }
  if (zone && zone !== 'Z') {
    const sign = zone[0] === '-' ? -1 : 1;
    const digits = zone.slice(1).replace(':', '');
    seconds -= sign * (Number(digits.slice(0, 2)) * 3600 + Number(digits.slice(2)) * 60);
  }
  const ticks = Number(frac.slice(0, 7).padEnd(7, '0'));
  return [seconds, ticks];
}

/** A field's arrival value: seconds (a number) or a date-time. */
function parseArrival(value: unknown, where: string): Instant {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TraceError(`${where}: arrival ${value} is not finite`);
    return [value, 0];
  }
  if (typeof value === 'string') {
    const t = value.trim();
    if (t !== '' && Number.isFinite(Number(t))) return [Number(t), 0];
    try {
      return parseTimestamp(t);
    } catch (e) {
      throw new TraceError(`${where}: ${(e as Error).message}`);
    }
  }
  throw new TraceError(`${where}: arrival is missing`);
}

function parseCount(value: unknown, field: string, where: string): number {
  const n = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value.trim()) : NaN;
  if (!Number.isInteger(n) || n < 0) throw new TraceError(`${where}: ${field} ${JSON.stringify(value)} is not a whole number >= 0`);
  return n;
}

/** Splits one CSV line; double-quoted fields may hold commas and doubled quotes. */
function splitCsvLine(line: string): string[] {
  if (!line.includes('"')) return line.split(',');
  const out: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quoted) {
      if (c === '"' && line[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      out.push(field);
      field = '';
    } else field += c;
  }
  out.push(field);
  return out;
}

function findKey(keys: string[], accepted: string[], what: string, source: string): number {
  const normed = keys.map(normKey);
  for (const a of accepted) {
    const i = normed.indexOf(a);
    if (i >= 0) return i;
  }
  throw new TraceError(`${source}: no ${what} column (have ${keys.join(', ')}; expected one of ${accepted.join(', ')})`);
}

interface RawRow {
  at: Instant;
  inputTokens: number;
  outputTokens: number;
}

function parseCsv(text: string, name: string): RawRow[] {
  const lines = text.split(/\r?\n/);
  let h = 0;
  while (h < lines.length && lines[h].trim() === '') h++;
  if (h === lines.length) throw new TraceError(`${name}: empty`);
  const header = splitCsvLine(lines[h].replace(/^\uFEFF/, '')).map((s) => s.trim());
  const ia = findKey(header, ARRIVAL_KEYS, 'arrival time', name);
  const ii = findKey(header, INPUT_KEYS, 'input-token', name);
  const io = findKey(header, OUTPUT_KEYS, 'output-token', name);
  const rows: RawRow[] = [];
  for (let l = h + 1; l < lines.length; l++) {
    const line = lines[l];
    if (line.trim() === '') continue;
    const f = splitCsvLine(line);
    const where = `${name} line ${l + 1}`;
    if (f.length < header.length) throw new TraceError(`${where}: ${f.length} fields, the header has ${header.length}`);
    rows.push({ at: parseArrival(f[ia], where), inputTokens: parseCount(f[ii], 'input tokens', where), outputTokens: parseCount(f[io], 'output tokens', where) });
  }
  return rows;
}

function parseJsonl(text: string, name: string): RawRow[] {
  const rows: RawRow[] = [];
  const lines = text.split(/\r?\n/);
  let keys: [number, number, number] | null = null;
  let names: string[] = [];
  for (let l = 0; l < lines.length; l++) {
    const line = lines[l].trim();
    if (line === '') continue;
    const where = `${name} line ${l + 1}`;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new TraceError(`${where}: not JSON (${(e as Error).message})`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new TraceError(`${where}: not a JSON object`);
    const rec = obj as Record<string, unknown>;
    const own = Object.keys(rec);
    if (!keys || own.join('\0') !== names.join('\0')) {
      names = own;
      keys = [findKey(own, ARRIVAL_KEYS, 'arrival time', where), findKey(own, INPUT_KEYS, 'input-token', where), findKey(own, OUTPUT_KEYS, 'output-token', where)];
    }
    rows.push({
      at: parseArrival(rec[names[keys[0]]], where),
      inputTokens: parseCount(rec[names[keys[1]]], 'input tokens', where),
      outputTokens: parseCount(rec[names[keys[2]]], 'output tokens', where),
    });
  }
  if (rows.length === 0) throw new TraceError(`${name}: empty`);
  return rows;
}

/** Parses trace text. The format defaults to JSONL when the text starts with `{`, CSV otherwise. */
export function parseTrace(text: string, options: { name?: string; format?: TraceFormat } = {}): Trace {
  const name = options.name ?? 'trace';
  const format = options.format ?? (text.trimStart().startsWith('{') ? 'jsonl' : 'csv');
  const rows = format === 'jsonl' ? parseJsonl(text, name) : parseCsv(text, name);
  if (rows.length === 0) return { name, requests: [] };
  let [s0, t0] = rows[0].at;
  for (const { at } of rows) if (at[0] < s0 || (at[0] === s0 && at[1] < t0)) [s0, t0] = at;
  const requests = rows.map((r) => ({ arrival: r.at[0] - s0 + (r.at[1] - t0) * 1e-7, inputTokens: r.inputTokens, outputTokens: r.outputTokens }));
  // Array.prototype.sort is stable: requests with equal arrivals keep their file order
  requests.sort((a, b) => a.arrival - b.arrival);
  return { name, requests };
}

/** Reads a trace file (`.jsonl` / `.ndjson` / `.json` as JSONL, anything else as CSV). */
export function readTrace(path: string): Trace {
  const ext = extname(path).toLowerCase();
  const format: TraceFormat = ext === '.jsonl' || ext === '.ndjson' || ext === '.json' ? 'jsonl' : 'csv';
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new TraceError(`cannot read trace ${path}: ${(e as Error).message}`);
  }
  return parseTrace(text, { name: basename(path), format });
}

export interface ScaleOptions {
  /** multiplies every arrival time (so every inter-arrival gap): 0.5 replays twice as fast (default 1) */
  timeScale?: number;
  /** multiplies input and output lengths, rounded, at least 1 token each (default 1) */
  tokenScale?: number;
  /** the model's context: input + output is clamped to it, output first kept (at most context - 1), then the input trimmed */
  maxContext?: number;
}

/** A scaled copy of the requests (see ScaleOptions); arrivals stay sorted and simultaneous ones stay simultaneous. */
export function scaleTrace(requests: readonly TraceRequest[], o: ScaleOptions = {}): TraceRequest[] {
  const timeScale = o.timeScale ?? 1;
  const tokenScale = o.tokenScale ?? 1;
  if (!(Number.isFinite(timeScale) && timeScale >= 0)) throw new TraceError(`time scale must be a finite number >= 0, not ${timeScale}`);
  if (!(Number.isFinite(tokenScale) && tokenScale > 0)) throw new TraceError(`token scale must be a finite number > 0, not ${tokenScale}`);
  const ctx = o.maxContext;
  if (ctx !== undefined && !(Number.isInteger(ctx) && ctx >= 2)) throw new TraceError(`max context must be an integer >= 2, not ${ctx}`);
  return requests.map((r) => {
    let output = Math.max(1, Math.round(r.outputTokens * tokenScale));
    let input = Math.max(1, Math.round(r.inputTokens * tokenScale));
    if (ctx !== undefined) {
      output = Math.min(output, ctx - 1);
      input = Math.min(input, ctx - output);
    }
    return { arrival: r.arrival * timeScale, inputTokens: input, outputTokens: output };
  });
}

/** Requests whose arrival is before `seconds`, at most `count` of them. */
export function windowTrace(requests: readonly TraceRequest[], o: { seconds?: number; count?: number }): TraceRequest[] {
  const seconds = o.seconds ?? Infinity;
  const out: TraceRequest[] = [];
  for (const r of requests) {
    if (out.length >= (o.count ?? Infinity) || r.arrival >= seconds) break;
    out.push(r);
  }
  return out;
}

export interface Distribution {
  mean: number;
  p50: number;
  max: number;
}

export interface TraceSummary {
  requests: number;
  /** last arrival minus first, seconds */
  spanSeconds: number;
  /** (requests - 1) / span: the inverse of the mean inter-arrival gap (0 for a single instant) */
  meanRate: number;
  /** requests arriving at the same instant as the one before them */
  simultaneous: number;
  input: Distribution;
  output: Distribution;
}

/** The p-quantile (0..1) of sorted values, by linear interpolation between closest ranks. */
export function quantile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const x = p * (sorted.length - 1);
  const lo = Math.floor(x);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo);
}

function distribution(values: number[]): Distribution {
  const sorted = [...values].sort((a, b) => a - b);
  const mean = sorted.reduce((s, v) => s + v, 0) / Math.max(1, sorted.length);
  return { mean, p50: quantile(sorted, 0.5), max: sorted.length ? sorted[sorted.length - 1] : NaN };
}

export function summarizeTrace(requests: readonly TraceRequest[]): TraceSummary {
  const n = requests.length;
  const span = n ? requests[n - 1].arrival - requests[0].arrival : 0;
  let simultaneous = 0;
  for (let i = 1; i < n; i++) if (requests[i].arrival === requests[i - 1].arrival) simultaneous++;
  return {
    requests: n,
    spanSeconds: span,
    meanRate: span > 0 ? (n - 1) / span : 0,
    simultaneous,
    input: distribution(requests.map((r) => r.inputTokens)),
    output: distribution(requests.map((r) => r.outputTokens)),
  };
}
