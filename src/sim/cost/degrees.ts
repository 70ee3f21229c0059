import type { CostModel } from '../../scheduler/cost_model.ts';
import { type AnalyticalCostModel, analyticalDegrees } from './analytical.ts';
import { FittedCostModel, fittedDegrees } from './fitted.ts';
import { type DegreeCosts, degreeLabel, gpusOfDegree, parallelOf } from './parallel.ts';

/**
 * The cost model of every degree a step-time source can speak for: an analytical preset at any
 * TP/PP its shape allows, a fitted profile at the degrees it measured (and pipelines derived from
 * them), any other model at the one degree it was made for.
 */
export function degreesOf(cost: CostModel): DegreeCosts {
  if (cost instanceof FittedCostModel) return fittedDegrees(cost);
  const a = cost as Partial<AnalyticalCostModel>;
  if (a.hardware && a.shape && a.options) return analyticalDegrees(a.hardware, a.shape, a.options);
  const own = parallelOf(cost);
  return {
    describe: () => cost.describe(),
    degrees: (maxGpus) => (gpusOfDegree(own) <= maxGpus ? [own] : []),
    at: (d) => (d.tp === own.tp && d.pp === own.pp ? cost : `the cost model only times ${degreeLabel(own) || 'one GPU'}`),
  };
}
