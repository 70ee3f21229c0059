import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseTimestamp, parseTrace, quantile, readTrace, scaleTrace, summarizeTrace, TraceError, windowTrace } from '../src/sim/trace.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const azure = join(repoRoot, '..', 'shared', 'traces', 'azure-llm-2023');

describe('Azure LLM traces (shared/traces/README.md)', () => {
  // the README's table: requests, span, input mean / p50 / max, output mean / p50 / max
  const cases = [
    { file: 'AzureLLMInferenceTrace_code.csv', n: 8819, span: 3436, input: [2048, 1469, 7437], output: [28, 13, 1899] },
    { file: 'AzureLLMInferenceTrace_conv.csv', n: 19366, span: 3502, input: [1155, 1020, 14050], output: [211, 129, 1000] },
  ];
  for (const c of cases) {
    it(`${c.file}: ${c.n} requests with the stated span and token statistics`, () => {
      const trace = readTrace(join(azure, c.file));
      expect(trace.name).toBe(c.file);
      const s = summarizeTrace(trace.requests);
      expect(s.requests).toBe(c.n);
      expect(Math.round(s.spanSeconds)).toBe(c.span);
      expect([Math.round(s.input.mean), s.input.p50, s.input.max]).toEqual(c.input);
      expect([Math.round(s.output.mean), s.output.p50, s.output.max]).toEqual(c.output);
      expect(trace.requests[0].arrival).toBe(0);
      const unsorted = trace.requests.filter((r, i) => i > 0 && r.arrival < trace.requests[i - 1].arrival);
      expect(unsorted).toEqual([]);
    });
  }

  it('keeps the 100 ns resolution of the timestamps', () => {
    const r = readTrace(join(azure, 'AzureLLMInferenceTrace_code.csv')).requests;
    // 18:17:03.9799600, 18:17:04.0319600, 18:17:04.0781490
    expect(r[1].arrival).toBeCloseTo(0.052, 9);
    expect(r[2].arrival).toBeCloseTo(0.098189, 9);
    expect(r[1]).toMatchObject({ inputTokens: 3180, outputTokens: 8 });
  });
});

describe('trace parsing', () => {
  const tmp = useTmpDirs('wgserve-trace-');
  it('parses date-times to whole seconds and 100 ns ticks', () => {
    expect(parseTimestamp('2023-11-16 18:17:03.9799600')).toEqual([Date.UTC(2023, 10, 16, 18, 17, 3) / 1000, 9799600]);
    expect(parseTimestamp('2023-11-16T18:17:03.5Z')).toEqual([Date.UTC(2023, 10, 16, 18, 17, 3) / 1000, 5000000]);
    expect(parseTimestamp('2023-11-16 18:17:03+01:00')[0]).toBe(Date.UTC(2023, 10, 16, 17, 17, 3) / 1000);
    expect(() => parseTimestamp('yesterday')).toThrow(TraceError);
    expect(() => parseTimestamp('2023-13-01 00:00:00')).toThrow(/valid/);
  });

  it('keeps simultaneous arrivals, in file order, and sorts the rest stably', () => {
    const text = [
      'TIMESTAMP,ContextTokens,GeneratedTokens',
      '2023-11-16 18:17:04.0000000,10,1',
      '2023-11-16 18:17:03.5000000,20,2',
      '2023-11-16 18:17:04.0000000,30,3',
      '2023-11-16 18:17:04.0000000,40,4',
      '',
    ].join('\r\n');
    const { requests } = parseTrace(text, { name: 'x.csv' });
    expect(requests).toEqual([
      { arrival: 0, inputTokens: 20, outputTokens: 2 },
      { arrival: 0.5, inputTokens: 10, outputTokens: 1 },
      { arrival: 0.5, inputTokens: 30, outputTokens: 3 },
      { arrival: 0.5, inputTokens: 40, outputTokens: 4 },
    ]);
    expect(summarizeTrace(requests).simultaneous).toBe(2);
  });

  it('reads generic CSV (numeric seconds, other column names, quotes) and JSONL', () => {
    const csv = 'request_id,"arrival_time",prompt_tokens,output_len\n"a,1",1.5,100,7\nb,0.25,5,9\n';
    expect(parseTrace(csv).requests).toEqual([
      { arrival: 0, inputTokens: 5, outputTokens: 9 },
      { arrival: 1.25, inputTokens: 100, outputTokens: 7 },
    ]);
    const jsonl = '{"timestamp": 10, "input_tokens": 3, "output_tokens": 4}\n\n{"timestamp": "12.5", "input_tokens": 1, "output_tokens": 2}\n';
    expect(parseTrace(jsonl).requests).toEqual([
      { arrival: 0, inputTokens: 3, outputTokens: 4 },
      { arrival: 2.5, inputTokens: 1, outputTokens: 2 },
    ]);
    const dir = tmp();
    writeFileSync(join(dir, 't.jsonl'), jsonl);
    expect(readTrace(join(dir, 't.jsonl')).requests).toHaveLength(2);
  });

  it('says which line and column is wrong', () => {
    expect(() => parseTrace('TIMESTAMP,ContextTokens\n1,2\n', { name: 'f.csv' })).toThrow(/f\.csv: no output-token column/);
    expect(() => parseTrace('ts,input_tokens,output_tokens\n1,2,3\n2,x,3\n', { name: 'f.csv' })).toThrow(/f\.csv line 3: input tokens "x"/);
    expect(() => parseTrace('ts,input_tokens,output_tokens\n1,2\n', { name: 'f.csv' })).toThrow(/line 2: 2 fields/);
    expect(() => parseTrace('{"ts": 1, "input_tokens": 2, "output_tokens": 3}\n{oops\n')).toThrow(/line 2: not JSON/);
    expect(() => readTrace('/nonexistent/trace.csv')).toThrow(/cannot read trace/);
  });
});

describe('trace scaling', () => {
  const reqs = [
    { arrival: 0, inputTokens: 4808, outputTokens: 10 },
    { arrival: 2, inputTokens: 110, outputTokens: 27 },
    { arrival: 2, inputTokens: 14050, outputTokens: 1000 },
    { arrival: 5, inputTokens: 1, outputTokens: 0 },
  ];

  it('time scale multiplies every arrival (inter-arrival gaps); simultaneous arrivals stay simultaneous', () => {
    expect(scaleTrace(reqs, { timeScale: 0.5 }).map((r) => r.arrival)).toEqual([0, 1, 1, 2.5]);
    expect(scaleTrace(reqs, { timeScale: 3 }).map((r) => r.arrival)).toEqual([0, 6, 6, 15]);
    expect(scaleTrace(reqs).map((r) => r.arrival)).toEqual([0, 2, 2, 5]);
  });

  it('token scale shrinks both lengths, at least 1 token each, clamped to the context', () => {
    expect(scaleTrace(reqs, { tokenScale: 1 / 64 }).map((r) => [r.inputTokens, r.outputTokens])).toEqual([
      [75, 1],
      [2, 1],
      [220, 16],
      [1, 1],
    ]);
    const clamped = scaleTrace(reqs, { tokenScale: 1, maxContext: 2048 });
    expect(clamped.map((r) => [r.inputTokens, r.outputTokens])).toEqual([
      [2038, 10],
      [110, 27],
      [1048, 1000],
      [1, 1],
    ]);
    for (const r of clamped) expect(r.inputTokens + r.outputTokens).toBeLessThanOrEqual(2048);
    expect(scaleTrace([{ arrival: 0, inputTokens: 10, outputTokens: 500 }], { maxContext: 16 })).toEqual([{ arrival: 0, inputTokens: 1, outputTokens: 15 }]);
    expect(() => scaleTrace(reqs, { tokenScale: 0 })).toThrow(TraceError);
    expect(() => scaleTrace(reqs, { timeScale: -1 })).toThrow(TraceError);
  });

  it('scales a real trace to the test model: every request fits a 512-token context', () => {
    const r = scaleTrace(readTrace(join(azure, 'AzureLLMInferenceTrace_conv.csv')).requests, { tokenScale: 1 / 64, timeScale: 0.1, maxContext: 512 });
    const s = summarizeTrace(r);
    expect(s.requests).toBe(19366);
    expect(s.spanSeconds).toBeCloseTo(350.17, 1);
    expect(s.input.mean).toBeCloseTo(1155 / 64, 0);
    expect(r.filter((q) => q.inputTokens < 1 || q.outputTokens < 1 || q.inputTokens + q.outputTokens > 512)).toEqual([]);
  });

  it('windows by time and count; quantiles interpolate', () => {
    expect(windowTrace(reqs, { seconds: 2 })).toHaveLength(1);
    expect(windowTrace(reqs, { seconds: 2.1, count: 2 })).toHaveLength(2);
    expect(windowTrace(reqs, {})).toHaveLength(4);
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2.5);
    expect(quantile([5], 0.99)).toBe(5);
    expect(quantile([], 0.5)).toBeNaN();
  });
});
