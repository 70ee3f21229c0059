import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { binariseGates, formatGates, headColumns, headPattern, headPatternFromOptions, HeadPatternError, loadHeadPattern, parseGates, retrievalCounts } from '../src/kv/head_pattern.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const shape = { nLayers: 3, nKvHeads: 4 };
const tmp = useTmpDirs('head-pattern-');

describe('head pattern files', () => {
  it("reads DuoAttention's TSV (numpy savetxt) with comments, blank lines and CRLF", () => {
    const text = '# full_attention_heads.tsv\r\n1.000000000000000000e+00\t0.000000000000000000e+00\t2.5e-01\t1\r\n\n0\t0\t0\t0\n0.5\t0.75\t1\t0.125\n\n';
    expect(parseGates(text, 'p.tsv', shape)).toEqual([
      [1, 0, 0.25, 1],
      [0, 0, 0, 0],
      [0.5, 0.75, 1, 0.125],
    ]);
  });

  it('names the file and line of a wrong head count, a non-number, a gate outside [0,1], too many or too few layers', () => {
    const good = '1\t0\t0\t1\n';
    expect(() => parseGates(good + '1\t0\t0\n' + good, 'p.tsv', shape)).toThrow('p.tsv:2: 3 gates for layer 1, the model has 4 KV heads');
    expect(() => parseGates(good + good + '# x\n1\t0\tnan\t1\n', 'p.tsv', shape)).toThrow('p.tsv:4: gate 3 "nan" is not a number in [0,1]');
    expect(() => parseGates(good + '1\t0\tx1\t1\n' + good, 'p.tsv', shape)).toThrow(/p\.tsv:2: gate 3 "x1"/);
    expect(() => parseGates(good + '1\t0\t1.5\t1\n' + good, 'p.tsv', shape)).toThrow(/p\.tsv:2: gate 3 "1.5"/);
    expect(() => parseGates(good.repeat(4), 'p.tsv', shape)).toThrow('p.tsv:4: a row for layer 3, but the model has 3 layers');
    expect(() => parseGates(good.repeat(2), 'p.tsv', shape)).toThrow(/p\.tsv: 2 layer rows .*the model has 3 layers/);
    expect(() => parseGates('', 'p.tsv', shape)).toThrow(HeadPatternError);
  });

  it('a missing file is a clear error; what formatGates writes loads back to the same gates', () => {
    const dir = tmp();
    expect(() => loadHeadPattern(join(dir, 'none.tsv'), shape)).toThrow(`head pattern file ${join(dir, 'none.tsv')} not found`);
    const gates = [
      [0.123456, 1, 0, 0.5],
      [0.25, 0.75, 0.999999, 0.000001],
      [0, 0, 0, 0],
    ];
    const file = join(dir, 'p.tsv');
    writeFileSync(file, formatGates(gates, ['model x', 'seed 1']));
    const p = loadHeadPattern(file, shape, { sink: 4, recent: 32 });
    expect(p.gates).toEqual(gates);
    expect(p).toMatchObject({ sink: 4, recent: 32 });
    expect(retrievalCounts(p)).toEqual([2, 2, 0]); // threshold 0.5 by default, inclusive
    // the command-line form: no pattern without --head-pattern, and its options alone are an error
    expect(headPatternFromOptions({}, shape)).toBeUndefined();
    expect(() => headPatternFromOptions({ retrievalFraction: 0.5, sink: 4 }, shape)).toThrow('--retrieval-fraction, --sink need --head-pattern');
    expect(headPatternFromOptions({ headPattern: file, retrievalFraction: 0.25 }, shape)).toMatchObject({ sink: 64, recent: 256, kinds: binariseGates(gates, { retrievalFraction: 0.25 }) });
  });
});

describe('binarisation', () => {
  const gates = [
    [0.9, 0.1, 0.5, 0.3],
    [0.2, 0.2, 0.2, 0.8],
  ];
  it('by threshold (gate >= T) or by a top fraction per layer (ties in head order)', () => {
    expect(binariseGates(gates, { gateThreshold: 0.3 })).toEqual([
      ['retrieval', 'streaming', 'retrieval', 'retrieval'],
      ['streaming', 'streaming', 'streaming', 'retrieval'],
    ]);
    expect(binariseGates(gates, { retrievalFraction: 0.5 })).toEqual([
      ['retrieval', 'streaming', 'retrieval', 'streaming'],
      ['retrieval', 'streaming', 'streaming', 'retrieval'],
    ]);
    expect(retrievalCounts({ kinds: binariseGates(gates, { retrievalFraction: 0 }) })).toEqual([0, 0]);
    expect(retrievalCounts({ kinds: binariseGates(gates, { retrievalFraction: 1 }) })).toEqual([4, 4]);
    expect(() => binariseGates(gates, { retrievalFraction: 0.5, gateThreshold: 0.5 })).toThrow(/not both/);
    expect(() => binariseGates(gates, { retrievalFraction: 1.5 })).toThrow(/not in \[0,1\]/);
    expect(() => headPattern(gates, { recent: 0 })).toThrow(/recent 0/);
    expect(() => headPattern(gates, { sink: -1 })).toThrow(/sink -1/);
  });

  it('stores the most retrieval heads of any layer as full columns; other layers promote their highest streaming gates into them', () => {
    const p = headPattern(gates, { gateThreshold: 0.3 }); // layer 0: 3 retrieval heads, layer 1: 1
    const c = headColumns(p);
    expect(c.fullColumns).toBe(3);
    expect(Array.from(c.columnOf)).toEqual([0, 3, 1, 2, 1, 2, 3, 0]);
    // layer 1 keeps head 3 and promotes heads 0 and 1 (equal gates: head order) into full columns
    expect(c.kinds[1]).toEqual(['retrieval', 'retrieval', 'streaming', 'retrieval']);
    expect(c.kinds[0]).toEqual(p.kinds[0]);
    // every layer's columns are a permutation
    for (let l = 0; l < 2; l++) expect([...c.columnOf.subarray(l * 4, l * 4 + 4)].sort()).toEqual([0, 1, 2, 3]);
  });
});
