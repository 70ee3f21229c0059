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
// `merge`: combines S partials per query row with log-sum-exp weights; the same merge serves any
// partials with this meaning (e.g. a static-window partial and a retrieved-token partial).

override HEAD_DIM: u32 = 128;
override BLOCK_SIZE: u32 = 16;
// Query heads per workgroup (<= 8), all sharing one kv head.
override GQ: u32 = 8;
override WG: u32 = 128;
// Slots per partition.
override PART: u32 = 256;
override KV_F16: bool = false;
override DIRECT: bool = false;
override HEADWISE: bool = false;

override D4: u32 = HEAD_DIM / 4u;
// Token lanes in the P.V phase: invocation (tg, c) accumulates vec4 chunk c over tokens tg, tg + TG, ...
override TG: u32 = WG / D4;
override QS_LEN: u32 = GQ * D4;
// Scores [GQ, PART], reused at the end for the cross-lane reduction of the outputs (WG vec4 per head).
override SM_LEN: u32 = max(GQ * PART, WG * 4u);
override RED_LEN: u32 = GQ * WG;

const NEG_BIG: f32 = -1.0e30;

struct Params {
  n_heads: u32,
  n_kv_heads: u32,
  group: u32,        // n_heads / n_kv_heads
  table_stride: u32, // blocks per head row in block_table
  scale: f32,
  part_stride: u32,  // partials per query row in part_out / part_ml
  part_base: u32,    // index of this dispatch's first partition among them
  column_base: u32,  // HEADWISE: this layer's row of column_of (layer * n_kv_heads)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_pool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v_pool: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> block_table: array<u32>;
@group(0) @binding(5) var<storage, read> kv_len: array<u32>;
// DIRECT: the final output [batch, n_heads, HEAD_DIM]; otherwise partial outputs
// [batch * n_heads, part_stride, HEAD_DIM].
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
// (max, sum-exp) per partial: [batch * n_heads, part_stride, 2]. Unused (any small buffer) with DIRECT.
@group(0) @binding(7) var<storage, read_write> part_ml: array<vec2<f32>>;
// HEADWISE: u32 [n_layers, n_kv_heads], the column of each layer's kv heads. Unused (any small buffer) otherwise.
@group(0) @binding(8) var<storage, read> column_of: array<u32>;

var<workgroup> qs: array<vec4<f32>, QS_LEN>;
var<workgroup> sm: array<f32, SM_LEN>;
var<workgroup> red: array<f32, RED_LEN>;

//#include paged_kv

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let part = wg.x;
  let head_groups = p.group / GQ;
  let b = (wg.y / head_groups) / p.n_kv_heads;
  let kvh = (wg.y / head_groups) % p.n_kv_heads;
  let h0 = kvh * p.group + (wg.y % head_groups) * GQ;
  let qrow0 = b * p.n_heads + h0; // first of the GQ consecutive query rows
  var row = b * p.n_kv_heads + kvh;
  if (HEADWISE) { row = b * p.n_kv_heads + column_of[p.column_base + kvh]; }
  let n = kv_len[row];
  let start = part * PART;

  if (start >= n) {
    if (DIRECT) {
      for (var i = lid; i < GQ * D4; i += WG) { out[qrow0 * D4 + i] = vec4(0.0); }
    } else if (lid < GQ) {
      part_ml[(qrow0 + lid) * p.part_stride + p.part_base + part] = vec2(NEG_BIG, 0.0);
    }
    return;
  }
  let cnt = min(n - start, PART);

  for (var i = lid; i < GQ * D4; i += WG) { qs[i] = q[qrow0 * D4 + i] * p.scale; }
  workgroupBarrier();

  // Scores: invocation lid takes slots lid, lid + WG, ... and dots its K row with all GQ queries.
  var tmax: array<f32, 8>;
  for (var g = 0u; g < GQ; g++) { tmax[g] = NEG_BIG; }
  for (var t = lid; t < cnt; t += WG) {
    let slot = slot_of(row, start + t);
    // Explicit initializer: without one, Dawn + SwiftShader keep the previous iteration's value.
    var s = array<f32, 8>();
    for (var c = 0u; c < D4; c++) {
      let k = load_k(slot, c);
      for (var g = 0u; g < GQ; g++) { s[g] += dot(qs[g * D4 + c], k); }
    }
    for (var g = 0u; g < GQ; g++) {
      sm[g * PART + t] = s[g];
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
  // Probabilities in place, by the invocation that wrote each score.
  for (var t = lid; t < cnt; t += WG) {
    for (var g = 0u; g < GQ; g++) { sm[g * PART + t] = exp(sm[g * PART + t] - m[g]); }
  }
  workgroupBarrier();

  // P.V: invocation (tg, c) reads chunk c of V rows tg, tg + TG, ... (a row is read by D4 adjacent
  // invocations, so loads coalesce) and accumulates it for all GQ heads.
  let c = lid % D4;
  let tg = lid / D4;
  var acc: array<vec4<f32>, 8>;
  var lsum: array<f32, 8>;
  if (tg < TG) {
    for (var t = tg; t < cnt; t += TG) {
      let v = load_v(slot_of(row, start + t), c);
      for (var g = 0u; g < GQ; g++) {
        let pr = sm[g * PART + t];
        acc[g] += pr * v;
        lsum[g] += pr;
      }
    }
  }
  workgroupBarrier();

  // Reduce over the TG token lanes, HB heads at a time through `sm` (sums through `red`).
  if (tg < TG && c == 0u) {
    for (var g = 0u; g < GQ; g++) { red[g * TG + tg] = lsum[g]; }
  }
  let hb = SM_LEN / (WG * 4u);
  for (var g0 = 0u; g0 < GQ; g0 += hb) {
    if (tg < TG) {
      for (var g = g0; g < min(g0 + hb, GQ); g++) {
        let o = ((g - g0) * WG + tg * D4 + c) * 4u;
        sm[o] = acc[g].x;
        sm[o + 1u] = acc[g].y;
        sm[o + 2u] = acc[g].z;
        sm[o + 3u] = acc[g].w;
      }
    }
    workgroupBarrier();
    if (tg == 0u) {
      for (var g = g0; g < min(g0 + hb, GQ); g++) {
        var o = vec4(0.0);
        var l = 0.0;
        for (var j = 0u; j < TG; j++) {
          let i = ((g - g0) * WG + j * D4 + c) * 4u;
          o += vec4(sm[i], sm[i + 1u], sm[i + 2u], sm[i + 3u]);
          l += red[g * TG + j];
        }
        let qr = qrow0 + g;
        if (DIRECT) {
          out[qr * D4 + c] = o / l;
        } else {
          let pi = qr * p.part_stride + p.part_base + part;
          out[pi * D4 + c] = o / l;
          if (c == 0u) { part_ml[pi] = vec2(m[g], l); }
        }
      }
    }
    workgroupBarrier();
  }
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
