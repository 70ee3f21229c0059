import type { KvView, SeqView } from '../../src/scheduler/scheduler.ts';

/** A scheduler's KV view for tests: one block per 4 tokens per sequence (one KV head), a fixed pool. */
export function kvOf(seqs: SeqView[], total: number): KvView {
  const held = (s: SeqView) => (s.state === 'running' ? Math.ceil(s.computed / 4) : 0);
  const used = seqs.reduce((n, s) => n + held(s), 0);
  return {
    freeBlocks: total - used,
    blocksNeeded: (id, t) => {
      const s = seqs.find((x) => x.id === id);
      const have = s && s.state === 'running' ? s.computed : 0;
      return Math.ceil((have + t) / 4) - Math.ceil(have / 4);
    },
    blocksHeld: (id) => held(seqs.find((x) => x.id === id)!),
  };
}
