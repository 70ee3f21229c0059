// Dequantisation: out[i] = element i of a weight buffer (any weight format, common/weights.wgsl;
// WFMT picks it) for i < count, as f32. The buffer is read as one row of count elements (count is
// a whole number of blocks for quantised formats). One thread per group of w_group() elements (8, or
// a q8_0 / q4_0 block); groups are numbered over a 1D index folded into a 2D grid. Used by tests to
// check the decoders bit for bit, and by tools.
//#include weights

override WFMT: u32 = 0u;
override WG: u32 = 64u;

struct Params {
  count: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// Writes elements col..col+7 (ragged f32 / f16 / bf16 ends).
fn store8(col: u32, v: W8) {
  if (col + 8u <= p.count) {
    for (var e = 0u; e < 4u; e++) {
      out[col + e] = v.lo[e];
      out[col + 4u + e] = v.hi[e];
    }
  } else {
    for (var e = 0u; e < 4u; e++) {
      if (col + e < p.count) { out[col + e] = v.lo[e]; }
      if (col + 4u + e < p.count) { out[col + 4u + e] = v.hi[e]; }
    }
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let ge = w_group();
  let g = (wg.x + wg.y * nwg.x) * WG + lid;
  if (g >= (p.count + ge - 1u) / ge) { return; }
  let col = g * ge;
  if (w_quantized()) {
    let blk = w_block(g);
    for (var s = 0u; s < 4u; s++) { store8(col + s * 8u, w_block8(blk, s)); }
    return;
  }
  store8(col, w_load8(0u, col, p.count));
}
