import { MODEL_SHAPES, type ModelShape, type ShapeScale, reducedShape } from '../src/model/shapes.ts';

// the shapes live in the runtime layer (cost models use them too); re-exported for the benchmarks
export { MODEL_SHAPES, type ModelShape } from '../src/model/shapes.ts';

/**
 * The shapes a benchmark run uses. On a software device (SwiftShader) full shapes take minutes per
 * kernel, so `reduced` runs the test model plus the real models scaled down by 8 in every width
 * (head dims kept), labelled as such in the results.
 */
export function benchShapes(scale: BenchScale): ModelShape[] {
  const real = [MODEL_SHAPES['llama-3.2-1b'], MODEL_SHAPES['llama-3-8b'], MODEL_SHAPES['qwen2.5-7b']];
  if (scale === 'full') return [MODEL_SHAPES['stories260k'], ...real];
  return [MODEL_SHAPES['stories260k'], ...real.map(reducedShape)];
}

export type BenchScale = ShapeScale;
