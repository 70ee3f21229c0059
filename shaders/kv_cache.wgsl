// Paged KV cache store: copies the new K and V rows of a step ([tokens, n_kv_heads, head_dim] f32)
// into the per-layer K and V pools ([num_blocks, BLOCK_SIZE, head_dim]) at the absolute pool slots
// given by slot_mapping[token * n_kv_heads + kv_head] (slot = block * BLOCK_SIZE + offset, chosen
// on the CPU by the block allocator). A slot of 0xffffffff skips the row (padding tokens). Row
// (token t, kv head h) is read at t * src_stride + k_off (v_off) + h * head_dim: [tokens,
// n_kv_heads, head_dim] rows by default, or the K and V parts of a fused q/k/v buffer.
//
// Everything is bound as raw 32-bit words: in f32 mode the rows are copied bit for bit, in f16 mode
// (KV_F16) each pair of values is packed into one word with pack2x16float. One invocation moves
// four consecutive values (head_dim is a multiple of 4) of one K row and one V row.

override WG: u32 = 256;
override KV_F16: bool = false;

struct Params {
  rows: u32,      // tokens * n_kv_heads
  head_dim: u32,
  n_kv_heads: u32,
  src_stride: u32, // elements per token of k_new / v_new
  k_off: u32,
  v_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k_new: array<u32>;
@group(0) @binding(2) var<storage, read> v_new: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_pool: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_pool: array<u32>;
@group(0) @binding(5) var<storage, read> slot_mapping: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let chunks = p.head_dim / 4u;
  let i = (wg.x + wg.y * nwg.x) * WG + lid;
  let row = i / chunks;
  if (row >= p.rows) { return; }
  let slot = slot_mapping[row];
  if (slot == 0xffffffffu) { return; }
  let c4 = (i % chunks) * 4u;
  let src = (row / p.n_kv_heads) * p.src_stride + (row % p.n_kv_heads) * p.head_dim + c4;
  let ks = src + p.k_off;
  let vs = src + p.v_off;
  let dst = slot * p.head_dim + c4;
  if (KV_F16) {
    let d = dst / 2u;
    k_pool[d] = pack2x16float(vec2(bitcast<f32>(k_new[ks]), bitcast<f32>(k_new[ks + 1u])));
    k_pool[d + 1u] = pack2x16float(vec2(bitcast<f32>(k_new[ks + 2u]), bitcast<f32>(k_new[ks + 3u])));
    v_pool[d] = pack2x16float(vec2(bitcast<f32>(v_new[vs]), bitcast<f32>(v_new[vs + 1u])));
    v_pool[d + 1u] = pack2x16float(vec2(bitcast<f32>(v_new[vs + 2u]), bitcast<f32>(v_new[vs + 3u])));
  } else {
    for (var j = 0u; j < 4u; j++) {
      k_pool[dst + j] = k_new[ks + j];
      v_pool[dst + j] = v_new[vs + j];
    }
  }
}
