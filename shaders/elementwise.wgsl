// Elementwise kernels over `count` f32 values: out = silu(in0) * in1 (SwiGLU) and out = in0 + in1
// (residual add). The forward pass fuses both into matmul epilogues (matmul.wgsl); silu_mul still
// serves layers whose gate and up weights differ in format. The bulk runs one vec4 per invocation
// (16-byte coalesced loads and stores) over the first count/4*4 values; the remaining 0-3 values
// run in a one-workgroup tail dispatch.
// Each entry point has a `_tail` twin that views the same bindings as f32 (WGSL lets entry points
// declare different variables at one binding). out must not alias in0 or in1: WebGPU forbids a
// writable storage binding overlapping another binding of the same dispatch.

//#include activation

override WG: u32 = 256;

struct Params {
  count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0_4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> in1_4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out_4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> in0_1: array<f32>;
@group(0) @binding(2) var<storage, read> in1_1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_1: array<f32>;

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
