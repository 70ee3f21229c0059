import type { StepStats } from '../engine/engine.ts';
import type { BatchShape, CostModel } from './cost_model.ts';

/**
 * A step-time model fitted online from the engine's own steps (feed it `engine.onStep` stats):
 *
 *     seconds = a + b x prefillTokens + c x decodeSeqs
 *
 * by least squares over the most recent `window` steps (a small ridge term keeps the 3x3 system
 * solvable while the steps all look alike; negative coefficients are clamped to 0). It is what
 * `wgserve serve --policy slo` uses when no --cost-model file is given: a conservative default in
 * that, until `minSteps` steps have been measured, it predicts 0 s (the SLO policy then orders by
 * deadline and rejects only requests already past due). Attention and context length are not
 * modelled (the engine's step stats do not carry them).
 */
export class OnlineCostModel implements CostModel {
  private readonly rows: { p: number; d: number; t: number }[] = [];
  private coef: [number, number, number] | null = null;
  private dirty = false;

  constructor(
    /** KV capacity of the instance in tokens (reported, not used by the fit) */
    readonly kvCapacityTokens = Infinity,
    private readonly window = 256,
    private readonly minSteps = 8,
  ) {}

  /** Records one measured step. */
  /** Learns from one engine step; its loop period (host work included) when known. */
  observe(s: Pick<StepStats, 'sequences' | 'promptTokens' | 'decodeTokens' | 'seconds'> & { periodSeconds?: number }): void {
    const t = s.periodSeconds ?? s.seconds;
    if (!(t >= 0) || !Number.isFinite(t)) return;
    this.rows.push({ p: s.promptTokens, d: s.decodeTokens, t });
    if (this.rows.length > this.window) this.rows.shift();
    this.dirty = true;
  }

  /** Steps measured (within the window). */
  get samples(): number {
    return this.rows.length;
  }

  /** [a, b, c], or null before minSteps steps. */
  coefficients(): [number, number, number] | null {
    if (this.rows.length < this.minSteps) return null;
    if (this.dirty || !this.coef) {
      this.coef = fit(this.rows);
      this.dirty = false;
    }
    return this.coef;
  }

  stepSeconds(b: BatchShape): number {
    const c = this.coefficients();
    if (!c) return 0;
    return c[0] + c[1] * b.prefillTokens + c[2] * b.decodeSeqs;
  }

  kvTransferSeconds(): number {
    return 0;
  }

  describe(): string {
    const c = this.coefficients();
    if (!c) return `online step-time fit (${this.rows.length}/${this.minSteps} steps measured: predicts 0 s until then)`;
    const ms = (v: number) => (v * 1e3).toPrecision(3);
    return `online step-time fit over ${this.rows.length} steps: ${ms(c[0])} ms + ${ms(c[1])} ms/prompt token + ${ms(c[2])} ms/decode sequence`;
  }
}

/** Ridge least squares of t on [1, p, d]; coefficients clamped to >= 0. */
function fit(rows: readonly { p: number; d: number; t: number }[]): [number, number, number] {
  const A = [
    [0, 0, 0],
    [0, 0, 0],
    [0, 0, 0],
  ];
  const y = [0, 0, 0];
  for (const r of rows) {
    const x = [1, r.p, r.d];
    for (let i = 0; i < 3; i++) {
      y[i] += x[i] * r.t;
      for (let j = 0; j < 3; j++) A[i][j] += x[i] * x[j];
    }
  }
  for (let i = 0; i < 3; i++) A[i][i] += 1e-9 * (1 + A[i][i]);
  const c = solve3(A, y);
  const mean = rows.reduce((n, r) => n + r.t, 0) / rows.length;
  if (!c || c.some((v) => !Number.isFinite(v))) return [mean, 0, 0];
  // a negative slope is noise: drop it and refit the intercept to the mean residual
  const b = Math.max(0, c[1]);
  const d = Math.max(0, c[2]);
  const a = Math.max(0, rows.reduce((n, r) => n + r.t - b * r.p - d * r.d, 0) / rows.length);
  return [a, b, d];
}

/** Gaussian elimination with partial pivoting; null when singular. */
function solve3(A: number[][], y: number[]): number[] | null {
  const m = A.map((row, i) => [...row, y[i]]);
  for (let col = 0; col < 3; col++) {
    let piv = col;
    for (let r = col + 1; r < 3; r++) if (Math.abs(m[r][col]) > Math.abs(m[piv][col])) piv = r;
    if (Math.abs(m[piv][col]) < 1e-300) return null;
    [m[col], m[piv]] = [m[piv], m[col]];
    for (let r = 0; r < 3; r++) {
      if (r === col) continue;
      const f = m[r][col] / m[col][col];
      for (let k = col; k < 4; k++) m[r][k] -= f * m[col][k];
    }
  }
  return [m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]];
}
