import { Heap } from '../util/heap.ts';

/** A prompt to prefill: when its first token is due and how long its prefill takes (seconds). */
export interface PromptJob {
  due: number;
  work: number;
}

/**
 * The order in which to prefill prompts so that as many as possible meet their due times, on one
 * machine that runs them one after another from `start` (Moore and Hodgson's algorithm, optimal
 * for the number of jobs on time): take the jobs in due order (ties: less work first, so that a
 * burst of simultaneous arrivals is served shortest first); whenever the job just added would
 * finish late, drop the longest job kept so far. The dropped ones are `late`: they cannot all be
 * on time beside the others. `onTime` is in due order with each job's predicted finish; `late` is
 * shortest first. `jobs` must be sorted by (due, work). O(n log n).
 */
export function orderPrompts<T extends PromptJob>(jobs: readonly T[], start: number): { onTime: { job: T; finish: number }[]; late: T[] } {
  const kept = new Heap<Kept>(longerFirst);
  const dropped = new Uint8Array(jobs.length);
  let t = start;
  for (let i = 0; i < jobs.length; i++) {
    kept.push({ i, work: jobs[i].work });
    t += jobs[i].work;
    if (t > jobs[i].due) {
      const longest = kept.pop()!;
      dropped[longest.i] = 1;
      t -= longest.work;
    }
  }
  const onTime: { job: T; finish: number }[] = [];
  const late: T[] = [];
  t = start;
  for (let i = 0; i < jobs.length; i++) {
    if (dropped[i]) late.push(jobs[i]);
    else onTime.push({ job: jobs[i], finish: (t += jobs[i].work) });
  }
  late.sort(lessWork);
  return { onTime, late };
}

interface Kept {
  i: number;
  work: number;
}
const longerFirst = (a: Kept, b: Kept) => a.work > b.work;
const lessWork = (a: PromptJob, b: PromptJob) => a.work - b.work;
