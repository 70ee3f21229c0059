// The RMSNorm kernel (docs: rmsnorm.wgsl). The including shader provides wg_sum (reduce or
// reduce_subgroup).
override WG: u32 = 256;

struct Params {
  rows: u32,
  dim: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;

fn row_of(wg: vec3u, nwg: vec3u) -> u32 {
  return wg.x + wg.y * nwg.x;
}

// 1 / sqrt(mean(x[row, :]^2) + eps); called by the whole workgroup.
fn row_scale(row: u32, lid: u32) -> f32 {
  let base = row * p.dim;
  var ss = 0.0;
  for (var i = lid; i < p.dim; i += WG) {
    let v = x[base + i];
    ss += v * v;
  }
  return inverseSqrt(wg_sum(ss, lid) / f32(p.dim) + p.eps);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = row_of(wg, nwg);
  if (row >= p.rows) { return; }
  let base = row * p.dim;
  let s = row_scale(row, lid);
  for (var i = lid; i < p.dim; i += WG) {
    y[base + i] = x[base + i] * s * w[i];
  }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
         @builtin(local_invocation_index) lid: u32) {
  let row = row_of(wg, nwg);
  if (row >= p.rows) { return; }
  let s = row_scale(row, lid);
  if (lid == 0u) { scales[row] = s; }
}
