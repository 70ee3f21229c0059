import { onnx } from 'onnx-proto';
import * as ort from 'onnxruntime-node';

/**
 * Builds one-graph ONNX models for onnxruntime's CPU backend, the independent oracle the kernel
 * tests compare against (a second implementation that shares no code with ours).
 */
export interface GraphSpec {
  nodes: onnx.INodeProto[];
  inputs: { name: string; dims: number[] }[];
  outputs: { name: string; dims: number[] }[];
  /** constant tensors (weights, epsilons) */
  initializers?: { name: string; dims: number[]; data: Float32Array }[];
  opset?: number;
}

const f32Type = (dims: number[]): onnx.ITypeProto => ({
  tensorType: { elemType: onnx.TensorProto.DataType.FLOAT, shape: { dim: dims.map((d) => ({ dimValue: d })) } },
});

export function buildModel(g: GraphSpec): Uint8Array {
  const model: onnx.IModelProto = {
    irVersion: 8,
    opsetImport: [{ domain: '', version: g.opset ?? 13 }],
    producerName: 'wgserve-tests',
    graph: {
      name: 'oracle',
      node: g.nodes,
      input: g.inputs.map((i) => ({ name: i.name, type: f32Type(i.dims) })),
      output: g.outputs.map((o) => ({ name: o.name, type: f32Type(o.dims) })),
      initializer: (g.initializers ?? []).map((t) => ({
        name: t.name,
        dims: t.dims,
        dataType: onnx.TensorProto.DataType.FLOAT,
        rawData: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
      })),
    },
  };
  return onnx.ModelProto.encode(model).finish();
}

/** Runs the model on onnxruntime's CPU execution provider and returns the first output. */
export async function runOnnx(model: Uint8Array, feeds: Record<string, { data: Float32Array; dims: number[] }>): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(model, { executionProviders: ['cpu'] });
  try {
    const inputs: Record<string, ort.Tensor> = {};
    for (const [name, f] of Object.entries(feeds)) inputs[name] = new ort.Tensor('float32', f.data, f.dims);
    const result = await session.run(inputs);
    return result[session.outputNames[0]].data as Float32Array;
  } finally {
    await session.release();
  }
}

export const node = (opType: string, input: string[], output: string[], attribute: onnx.IAttributeProto[] = []): onnx.INodeProto => ({
  opType,
  input,
  output,
  attribute,
});

export const intsAttr = (name: string, ints: number[]): onnx.IAttributeProto => ({ name, ints, type: onnx.AttributeProto.AttributeType.INTS });
export const intAttr = (name: string, i: number): onnx.IAttributeProto => ({ name, i, type: onnx.AttributeProto.AttributeType.INT });
