// Row gathers: out[t, :] = row tokens[t] of a table, for count tokens. Two entry points:
//
// main   the table is an [rows, dim] weight matrix as uploaded (common/weights.wgsl, any format;
//        WFMT picks it). One thread per group of w_group() consecutive elements of an output row
//        (8, or a q8_0 / q4_0 block), so neighbouring threads read neighbouring table bytes and
//        write neighbouring outputs.
// gather the table is dense rows of dim f32 (WFMT 0) or f16 packed in pairs (WFMT 1), with no
//        row padding: activations (the residual rows whose logits are wanted) and KV pool rows,
//        not weights. One thread per output element.
//
// Work items are numbered over a 1D index folded into a 2D grid. A token id >= rows (an invalid
// id) yields a row of zeros rather than reading out of bounds.
//#include weights
//#include store_row8

override WFMT: u32 = 0u;
override WG: u32 = 64u;

struct Params {
  count: u32,
  dim: u32,
  rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4u>;     // main: the weight table
@group(0) @binding(1) var<storage, read> rows: array<u32>;    // gather: the dense rows
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let ge = w_group();
  let per_row = (p.dim + ge - 1u) / ge;
  let i = (wg.x + wg.y * nwg.x) * WG + lid;
  if (i >= p.count * per_row) { return; }
  let t = i / per_row;
  let col = (i % per_row) * ge;
  let tok = tokens[t];
  if (w_quantized()) {
    var blk = WB(0.0, vec4u(0u), vec4u(0u));
    if (tok < p.rows) { blk = w_block(tok * (p.dim / 32u) + col / 32u); }
    for (var s = 0u; s < 4u; s++) {
      var v = W8(vec4f(0.0), vec4f(0.0));   // +0, not (0 - 8) * 0
      if (tok < p.rows) { v = w_block8(blk, s); }
      store_row8(t * p.dim + col + s * 8u, col + s * 8u, p.dim, v);
    }
    return;
  }
  var v = W8(vec4f(0.0), vec4f(0.0));
  if (tok < p.rows) { v = w_load8(tok * w_row_vec4s(p.dim), col); }
  store_row8(t * p.dim + col, col, p.dim, v);
}

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * WG + lid;
  if (i >= p.count * p.dim) { return; }
  let tok = tokens[i / p.dim];
  var v = 0.0;
  if (tok < p.rows) {
    let e = tok * p.dim + i % p.dim;
    if (WFMT == WFMT_F16) {
      v = unpack2x16float(rows[e / 2u])[e % 2u];
    } else {
      v = bitcast<f32>(rows[e]);
    }
  }
  out[i] = v;
}
