// Elementwise kernels over `count` f32 values: out = silu(in0) * in1 (SwiGLU), out = in0 + in1
// (residual add), and out = in0 + in1[i % width] (a bias row added to every row: q/k/v biases). The bulk runs one vec4 per invocation (16-byte coalesced loads and stores) over
// the first count/4*4 values; the remaining 0-3 values run in a one-workgroup tail dispatch.
// Each entry point has a `_tail` twin that views the same bindings as f32 (WGSL lets entry points
// declare different variables at one binding). out must not alias in0 or in1: WebGPU forbids a
// writable storage binding overlapping another binding of the same dispatch.

override WG: u32 = 256;

struct Params {
  count: u32,
  width: u32, // add_bias only: the bias length (row width)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0_4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> in1_4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out_4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> in0_1: array<f32>;
@group(0) @binding(2) var<storage, read> in1_1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_1: array<f32>;

// silu(g) = g * sigmoid(g), with exp taken of -|g| only: it never overflows, and no division by a
// huge or infinite denominator happens (WGSL bounds division only for |divisor| < 2^126), so
// g = +-90 or beyond give g and -0-ish respectively instead of NaN.
fn silu4(g: vec4<f32>) -> vec4<f32> {
  let e = exp(-abs(g));       // (0, 1]
  let r = 1.0 / (1.0 + e);    // sigmoid(|g|) in [0.5, 1)
  return g * select(e * r, r, g >= vec4<f32>(0.0));
}

fn silu1(g: f32) -> f32 {
  let e = exp(-abs(g));
  let r = 1.0 / (1.0 + e);
  return g * select(e * r, r, g >= 0.0);
}

fn vec_index(wg: vec3u, nwg: vec3u, lid: u32) -> u32 {
  return (wg.x + wg.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn silu_mul(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
            @builtin(local_invocation_index) lid: u32) {
  let i = vec_index(wg, nwg, lid);
  if (i >= p.count / 4u) { return; }
  out_4[i] = silu4(in0_4[i]) * in1_4[i];
}

@compute @workgroup_size(4)
fn silu_mul_tail(@builtin(local_invocation_index) lid: u32) {
  let i = p.count / 4u * 4u + lid;
  if (i >= p.count) { return; }
  out_1[i] = silu1(in0_1[i]) * in1_1[i];
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
       @builtin(local_invocation_index) lid: u32) {
  let i = vec_index(wg, nwg, lid);
  if (i >= p.count / 4u) { return; }
  out_4[i] = in0_4[i] + in1_4[i];
}

@compute @workgroup_size(4)
fn add_tail(@builtin(local_invocation_index) lid: u32) {
  let i = p.count / 4u * 4u + lid;
  if (i >= p.count) { return; }
  out_1[i] = in0_1[i] + in1_1[i];
}

// One value per invocation: biases are applied to q/k/v only, a small share of a step's traffic.
@compute @workgroup_size(WG)
fn add_bias(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
            @builtin(local_invocation_index) lid: u32) {
  let i = vec_index(wg, nwg, lid);
  if (i >= p.count) { return; }
  out_1[i] = in0_1[i] + in1_1[i % p.width];
}
