import { Heap } from '../util/heap.ts';

/** A prompt to prefill: when its first token is due, how long its prefill takes (seconds), its tokens. */
export interface PromptJob {
  due: number;
  work: number;
  tokens: number;
  /** its prefill has started (it holds KV): committed work, dropped only when no other job can be */
  pinned?: boolean;
}

/**
 * The order in which to prefill prompts on one machine that runs them one after another from
 * `start`, so that as many as possible meet their due times and, among orders that keep those on
 * time, short prompts go first.
 *
 * 1. Which can be on time: Moore and Hodgson's algorithm (optimal for the number of jobs on time):
 *    take the jobs in due order; whenever the job just added would finish late, drop the longest
 *    job kept so far. Pinned jobs (prefills under way) are committed: the longest unpinned job is
 *    dropped first (until the others are on time), so a new arrival never displaces work already
 *    started; without pins the result is optimal. The dropped ones are `late`, shortest first.
 * 2. In what order: the kept jobs in due order are all on time; then, for the front of the queue
 *    (until `fill` tokens are chosen: what one step can take), repeatedly move ahead the shortest
 *    job whose move keeps every job it overtakes on time (each of those loses that job's work from
 *    its slack; the jobs after it are unaffected). So prompts that arrive close together are
 *    prefilled shortest first, and a long prompt with little slack still goes first.
 *
 * `jobs` must be sorted by due time (ties: less work first). O(n log n) for step 1, O(n) per job
 * moved in step 2. `onTime` comes with each job's predicted finish.
 */
export function orderPrompts<T extends PromptJob>(jobs: readonly T[], start: number, fill = Infinity): { onTime: { job: T; finish: number }[]; late: T[] } {
  if (jobs.length === 0) return { onTime: [], late: [] };
  const kept = new Heap<Kept>(longerFirst);
  const pinned = new Heap<Kept>(longerFirst);
  const dropped = new Uint8Array(jobs.length);
  let t = start;
  for (let i = 0; i < jobs.length; i++) {
    (jobs[i].pinned ? pinned : kept).push({ i, work: jobs[i].work });
    t += jobs[i].work;
    while (t > jobs[i].due && kept.size + pinned.size > 0) {
      const longest = (kept.size > 0 ? kept : pinned).pop()!;
      dropped[longest.i] = 1;
      t -= longest.work;
    }
  }
  const edf: T[] = [];
  const late: T[] = [];
  for (let i = 0; i < jobs.length; i++) (dropped[i] ? late : edf).push(jobs[i]);
  late.sort(lessWork);

  // slack of each job in the due-order schedule; moving job j ahead costs every job before it w_j
  const slack: number[] = [];
  t = start;
  for (const j of edf) slack.push(j.due - (t += j.work));
  const moved = new Uint8Array(edf.length);
  const order: T[] = [];
  let tokens = 0;
  while (tokens < fill && order.length < edf.length) {
    let best = -1;
    let minSlack = Infinity; // over the jobs not yet moved that come before position i
    for (let i = 0; i < edf.length; i++) {
      if (moved[i]) continue;
      if (edf[i].work <= minSlack && (best < 0 || shorter(edf[i], edf[best]))) best = i;
      minSlack = Math.min(minSlack, slack[i]);
    }
    moved[best] = 1;
    order.push(edf[best]);
    tokens += edf[best].tokens;
    for (let i = 0; i < best; i++) slack[i] -= edf[best].work;
  }
  for (let i = 0; i < edf.length; i++) if (!moved[i]) order.push(edf[i]);

  const onTime: { job: T; finish: number }[] = [];
  t = start;
  for (const job of order) onTime.push({ job, finish: (t += job.work) });
  return { onTime, late };
}

interface Kept {
  i: number;
  work: number;
}
const longerFirst = (a: Kept, b: Kept) => a.work > b.work;
const lessWork = (a: PromptJob, b: PromptJob) => a.work - b.work || a.tokens - b.tokens;
/** less work, then fewer tokens (the tie when the cost model knows nothing yet) */
const shorter = (a: PromptJob, b: PromptJob) => a.work < b.work || (a.work === b.work && a.tokens < b.tokens);
