import type { CostModel } from '../scheduler/cost_model.ts';
import { orderPrompts } from '../scheduler/prompt_order.ts';
import type { Slo } from '../scheduler/scheduler.ts';
import { decodeRunSeconds, prefillSeconds } from '../scheduler/service_time.ts';
import type { SimRequest } from './workload.ts';

/**
 * Two ceilings on SLO attainment for a workload, from the cost model alone (no policy):
 * - `idle`: the fraction of requests that could meet their SLO served alone on an idle GPU (prompt
 *   prefilled in budget-sized chunks, then one decode step per token);
 * - `shortestFirst`: the fraction that could, with the prefills of requests that arrive at the same
 *   instant run one after another on an otherwise idle GPU in the order that puts the most first
 *   tokens in time (shortest first when they share a TTFT; Moore-Hodgson in general). A burst's
 *   later prompts wait for the earlier ones; earlier bursts and running decodes are ignored, and
 *   prompts are not batched together, so this is an estimate of what ordering alone can reach,
 *   not a bound every schedule stays under.
 */
export interface Ceilings {
  idle: number;
  shortestFirst: number;
}

/**
 * Whether a request whose first token comes `wait` seconds after its own prefill alone could still
 * meet `slo`. `decodeCost` times its decode steps (the decode instances' model when disaggregated).
 */
function meets(cost: CostModel, tokenBudget: number, input: number, output: number, slo: Slo, wait: number, decodeCost: CostModel): boolean {
  const first = wait + prefillSeconds(cost, 0, input, tokenBudget).seconds;
  const decode = decodeRunSeconds(decodeCost, input + 1, output - 1);
  if (slo.ttftMs !== undefined && first * 1e3 > slo.ttftMs) return false;
  if (slo.tpotMs !== undefined && output > 1 && (decode / (output - 1)) * 1e3 > slo.tpotMs) return false;
  if (slo.deadlineMs !== undefined && (first + decode) * 1e3 > slo.deadlineMs) return false;
  return true;
}

/** Whether a request could meet its SLO served alone on an idle GPU (prefill on `cost`, decode on `decodeCost`). */
export function idleFeasible(cost: CostModel, tokenBudget: number, input: number, output: number, slo: Slo, decodeCost = cost): boolean {
  return meets(cost, tokenBudget, input, output, slo, 0, decodeCost);
}

export function sloCeilings(workload: readonly SimRequest[], cost: CostModel, tokenBudget: number, sloOf: (r: SimRequest) => Slo, decodeCost = cost): Ceilings {
  const n = workload.length;
  if (n === 0) return { idle: NaN, shortestFirst: NaN };
  let idle = 0;
  let ordered = 0;
  for (let i = 0; i < n; ) {
    let j = i;
    while (j < n && workload[j].arrival === workload[i].arrival) j++;
    // the burst [i, j): each request's prefill alone, due by its TTFT (its deadline less its decode time without one)
    const jobs = workload.slice(i, j).map((r) => {
      const slo = sloOf(r);
      const output = Math.max(1, Math.min(r.outputTokens, r.maxTokens ?? Infinity));
      const input = Math.max(1, r.inputTokens);
      const work = prefillSeconds(cost, 0, input, tokenBudget).seconds;
      const decode = decodeRunSeconds(decodeCost, input + 1, output - 1);
      const due = Math.min(slo.ttftMs !== undefined ? slo.ttftMs / 1e3 : Infinity, slo.deadlineMs !== undefined ? slo.deadlineMs / 1e3 - decode : Infinity);
      return { due, work, tokens: input, input, output, slo };
    });
    jobs.sort((a, b) => a.due - b.due || a.work - b.work);
    for (const r of jobs) if (meets(cost, tokenBudget, r.input, r.output, r.slo, 0, decodeCost)) idle++;
    for (const { job, finish } of orderPrompts(jobs, 0).onTime) if (meets(cost, tokenBudget, job.input, job.output, job.slo, finish - job.work, decodeCost)) ordered++;
    i = j;
  }
  return { idle: idle / n, shortestFirst: ordered / n };
}
