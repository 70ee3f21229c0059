import { expect } from 'vitest';

export interface Tolerance {
  /** absolute error allowed everywhere */
  atol: number;
  /** error allowed relative to each expected value's magnitude */
  rtol: number;
}

/**
 * Asserts |actual - expected| <= atol + rtol * |expected| elementwise, reporting the worst element
 * (index, both values) so a failure says where and by how much.
 */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, label = ''): void {
  expect(actual.length, `${label} length`).toBe(expected.length);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const excess = Math.abs(a - e) - (tol.atol + tol.rtol * Math.abs(e));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = Number.isNaN(excess) ? Infinity : excess;
    }
  }
  if (worst >= 0) {
    expect.fail(
      `${label}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(allowed ${tol.atol} + ${tol.rtol}*|expected|)`,
    );
  }
}
