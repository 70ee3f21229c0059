import { describe, expect, it } from 'vitest';
import { StopMatcher } from '../src/engine/stop.ts';

const run = (stops: string[], pieces: string[]) => {
  const m = new StopMatcher(stops);
  let out = '';
  for (const p of pieces) {
    const r = m.push(p);
    out += r.emit;
    if (r.stopped) return { out, stopped: true };
  }
  return { out: out + m.flush(), stopped: false };
};

describe('stop strings', () => {
  it('are never emitted, even split across pieces', () => {
    expect(run(['END'], ['abc E', 'N', 'D more'])).toEqual({ out: 'abc ', stopped: true });
    expect(run(['\n\n'], ['line\n', '\nnext'])).toEqual({ out: 'line', stopped: true });
  });
  it('release held-back text when the stop string does not complete', () => {
    const m = new StopMatcher(['END']);
    expect(m.push('abc EN').emit).toBe('abc ');
    expect(m.push('X').emit).toBe('ENX');
    expect(run(['END'], ['tail E'])).toEqual({ out: 'tail E', stopped: false });
  });
  it('the earliest of several stop strings wins', () => {
    expect(run(['world', 'lo w'], ['hello world'])).toEqual({ out: 'hel', stopped: true });
  });
});
