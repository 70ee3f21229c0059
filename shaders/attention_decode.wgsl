// Decode attention over the paged KV cache, split-K ("flash-decoding").
//
// One new query per sequence: q [batch, n_heads, HEAD_DIM] -> out [batch, n_heads, HEAD_DIM].
// KV layout (see kernels/kv_cache.ts): pools [num_blocks, BLOCK_SIZE, HEAD_DIM]; a head row is one
// (sequence, kv head) pair, head_row = b * n_kv_heads + kv_head; its slot s lives in pool block
// block_table[head_row * table_stride + s / BLOCK_SIZE] at offset s % BLOCK_SIZE, and kv_len[head_row]
// slots are valid. Slot order does not matter (RoPE is applied before K is stored). KV_F16: the
// pools hold f16 pairs packed in u32 words (HEAD_DIM a multiple of 8), unpacked with unpack2x16float.
//
// `main`: workgroup (x = partition, y = head row * head groups + head group) attends GQ query heads
// that share one kv head to the PART slots [x * PART, (x + 1) * PART) of the head row, so every K/V
// row loaded is used by all GQ heads. Scores of the partition stay in workgroup memory (two-pass
// softmax inside the partition). Output per (query row, partition): the partial output normalised by
// its own sum, and (max, sum-exp) with the max in natural-log units of the scaled scores. Empty
// partitions write (max, sum) = (NEG_BIG, 0). With DIRECT (the context fits one partition) the
// normalised output is written straight to `out` and no merge is needed.
//
// HEADWISE (head-wise KV, docs/headwise.md): kv head h of sequence b reads head row
// b * n_kv_heads + column_of[column_base + h] (its column in this layer) and that row's kv_len. A
// ring column is read after this step's write, when it holds exactly the query's window (the sink
// and the latest tokens), so no mask is needed: the same code serves full and ring columns.
//
// The subgroup variant (attention_decode_subgroup.wgsl, devices with `subgroups`) differs only in
// how it computes the scores: SG_LANES adjacent lanes of a subgroup share each K row (coalesced vec4
// loads), their partial dot products summed by subgroupShuffleXor. The rest of the kernel is
// common/attention_decode_kernel.wgsl.
//
// `merge`: combines S partials per query row with log-sum-exp weights; the same merge serves any
// partials with this meaning (e.g. a static-window partial and a retrieved-token partial).

//#include attention_decode_kernel

// `main` scores: invocation lid takes slots lid, lid + WG, ... and dots its whole K row with all GQ
// queries; the maxima go through a workgroup-memory tree.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let t = decode_task(wg);
  if (t.start >= t.n) {
    write_empty(t, wg.x, lid);
    return;
  }
  load_q(t, lid);
  var tmax: array<f32, 8>;
  for (var g = 0u; g < GQ; g++) { tmax[g] = NEG_BIG; }
  for (var i = lid; i < t.cnt; i += WG) {
    let slot = slot_of(t.row, t.start + i);
    // Explicit initializer: without one, Dawn + SwiftShader keep the previous iteration's value.
    var s = array<f32, 8>();
    for (var c = 0u; c < D4; c++) {
      let k = load_k(slot, c);
      for (var g = 0u; g < GQ; g++) { s[g] += dot(qs[g * D4 + c], k); }
    }
    for (var g = 0u; g < GQ; g++) {
      sm[g * PART + i] = s[g];
      tmax[g] = max(tmax[g], s[g]);
    }
  }
  for (var g = 0u; g < GQ; g++) { red[g * WG + lid] = tmax[g]; }
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w >>= 1u) {
    if (lid < w) {
      for (var g = 0u; g < GQ; g++) { red[g * WG + lid] = max(red[g * WG + lid], red[g * WG + lid + w]); }
    }
    workgroupBarrier();
  }
  var m: array<f32, 8>;
  for (var g = 0u; g < GQ; g++) { m[g] = red[g * WG]; }
  attend(t, wg.x, m, lid);
}

// ---------------------------------------------------------------------------------------------
// merge: out[r] = sum_s w_s * o_s / sum_s w_s with w_s = l_s * exp(m_s - max_s m_s) over the partials
// of query row r that have l_s > 0 (others are skipped, whatever their output holds). A row without
// any such partial gets zeros. merge_stats also writes the merged (max, sum-exp), so merged
// results can be merged again. One invocation per output element.

override MERGE_WG: u32 = 256;

struct MergeParams {
  rows: u32,
  parts: u32,     // partials per row (the stride of the partial buffers)
  head_dim: u32,
}

@group(0) @binding(0) var<uniform> mp: MergeParams;
@group(0) @binding(1) var<storage, read> m_part_out: array<f32>;
@group(0) @binding(2) var<storage, read> m_part_ml: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> m_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> m_out_ml: array<vec2<f32>>;

// Writes out[i] for element i and returns the row's merged (max, sum-exp); r >= rows: nothing.
fn merge_element(i: u32) -> vec2<f32> {
  let r = i / mp.head_dim;
  let d = i % mp.head_dim;
  let base = r * mp.parts;
  var mx = NEG_BIG;
  for (var s = 0u; s < mp.parts; s++) {
    let ml = m_part_ml[base + s];
    if (ml.y > 0.0) { mx = max(mx, ml.x); }
  }
  var o = 0.0;
  var l = 0.0;
  for (var s = 0u; s < mp.parts; s++) {
    let ml = m_part_ml[base + s];
    if (ml.y > 0.0) {
      let w = ml.y * exp(ml.x - mx);
      o += w * m_part_out[(base + s) * mp.head_dim + d];
      l += w;
    }
  }
  m_out[i] = select(0.0, o / l, l > 0.0);
  return vec2(mx, l);
}

@compute @workgroup_size(MERGE_WG)
fn merge(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
         @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * MERGE_WG + lid;
  if (i >= mp.rows * mp.head_dim) { return; }
  merge_element(i);
}

@compute @workgroup_size(MERGE_WG)
fn merge_stats(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
               @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * MERGE_WG + lid;
  if (i >= mp.rows * mp.head_dim) { return; }
  let ml = merge_element(i);
  if (i % mp.head_dim == 0u) { m_out_ml[i / mp.head_dim] = ml; }
}
