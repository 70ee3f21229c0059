// Reading the paged KV cache (layout: kernels/kv_cache.ts). The including shader declares
// `override BLOCK_SIZE`, `D4` (head_dim / 4), `KV_F16`, the bindings `k_pool` / `v_pool`
// (array<vec4<u32>>: f32 values, or f16 pairs packed in u32 words) and `block_table`, and
// `p.table_stride`.

// Pool slot of the s-th cached token of head row `row`.
fn slot_of(row: u32, s: u32) -> u32 {
  return block_table[row * p.table_stride + s / BLOCK_SIZE] * BLOCK_SIZE + s % BLOCK_SIZE;
}

fn load_k(slot: u32, c: u32) -> vec4<f32> {
  if (KV_F16) {
    let w = k_pool[slot * (D4 / 2u) + c / 2u];
    let h = select(w.xy, w.zw, (c & 1u) == 1u);
    return vec4(unpack2x16float(h.x), unpack2x16float(h.y));
  }
  return bitcast<vec4<f32>>(k_pool[slot * D4 + c]);
}

fn load_v(slot: u32, c: u32) -> vec4<f32> {
  if (KV_F16) {
    let w = v_pool[slot * (D4 / 2u) + c / 2u];
    let h = select(w.xy, w.zw, (c & 1u) == 1u);
    return vec4(unpack2x16float(h.x), unpack2x16float(h.y));
  }
  return bitcast<vec4<f32>>(v_pool[slot * D4 + c]);
}
