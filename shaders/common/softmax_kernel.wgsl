// The softmax kernel (docs: softmax.wgsl). The including shader provides wg_sum and wg_max (reduce
// or reduce_subgroup).
override WG: u32 = 256;

const NEG_MAX: f32 = -0x1.fffffep+127f;

struct Params {
  rows: u32,
  cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn is_finite(v: f32) -> bool {
  return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wg.x + wg.y * nwg.x;
  if (row >= p.rows) { return; }
  let base = row * p.cols;

  // Online max and sum of exp(v - m): one exp per element, the sum rescaled when the max grows.
  var m = NEG_MAX;
  var s = 0.0;
  for (var i = lid; i < p.cols; i += WG) {
    let v = x[base + i];
    if (is_finite(v)) {
      if (v > m) {
        s = select(0.0, s * exp(m - v), s > 0.0) + 1.0;
        m = v;
      } else {
        s += exp(v - m);
      }
    }
  }
  let row_max = wg_max(m, lid);
  let total = wg_sum(select(0.0, s * exp(m - row_max), s > 0.0), lid);
  let inv = select(0.0, 1.0 / total, total > 0.0);
  for (var i = lid; i < p.cols; i += WG) {
    let v = x[base + i];
    y[base + i] = select(0.0, exp(v - row_max) * inv, is_finite(v));
  }
}
