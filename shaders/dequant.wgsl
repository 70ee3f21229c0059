// Dequantisation: out[r * k + c] = element c of row r of an [n, k] weight matrix as uploaded (any
// weight format, common/weights.wgsl; WFMT picks it), for the count = n * k elements, as f32. One
// thread per group of w_group() elements of a row (8, or a q8_0 / q4_0 block: k is a whole number
// of blocks, so blocks run through the rows); groups are numbered over a 1D index folded into a 2D
// grid. Used by tests to check the decoders bit for bit, and by tools.
//#include weights
//#include store_row8

override WFMT: u32 = 0u;
override WG: u32 = 64u;

struct Params {
  count: u32,
  k: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4u>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let g = (wg.x + wg.y * nwg.x) * WG + lid;
  if (w_quantized()) {
    if (g >= p.count / 32u) { return; }
    let blk = w_block(g);
    for (var s = 0u; s < 4u; s++) { store_row8(g * 32u + s * 8u, s * 8u, p.k, w_block8(blk, s)); }
    return;
  }
  let per_row = (p.k + 7u) / 8u;
  if (g >= (p.count / p.k) * per_row) { return; }
  let r = g / per_row;
  let col = (g % per_row) * 8u;
  store_row8(r * p.k + col, col, p.k, w_load8(r * w_row_vec4s(p.k), col));
}
