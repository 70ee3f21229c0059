// Stores eight decoded elements (W8, common/weights.wgsl) of a row, shared by the kernels that
// write weight rows out as f32 (dequant, embedding). The including shader declares
//   @group(0) @binding(..) var<storage, read_write> out: array<f32>;

// Writes elements col..col+7 of a row of k elements at out[o..]; those at or past k (a ragged
// f32 / f16 / bf16 row end) are not written.
fn store_row8(o: u32, col: u32, k: u32, v: W8) {
  if (col + 8u <= k) {
    for (var e = 0u; e < 4u; e++) {
      out[o + e] = v.lo[e];
      out[o + 4u + e] = v.hi[e];
    }
  } else {
    for (var e = 0u; e < 4u; e++) {
      if (col + e < k) { out[o + e] = v.lo[e]; }
      if (col + 4u + e < k) { out[o + 4u + e] = v.hi[e]; }
    }
  }
}
