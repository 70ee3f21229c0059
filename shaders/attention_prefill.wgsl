// Causal prefill attention over the paged KV cache, FlashAttention-style.
//
// q [total_tokens, n_heads, HEAD_DIM] packs the new tokens of several sequences; out has the same
// shape. Per sequence, seq_meta[seq] = (q_start, q_len, ctx_len, head_row_base): its queries are rows
// q_start .. q_start + q_len of q, the cache already holds ctx_len slots of each of its head rows
// (this chunk's K/V included, written by kv_cache before this runs), and kv head h reads head row
// head_row_base + h. Query i sits at position ctx_len - q_len + i and attends to slots
// 0 ..= position, so a prompt split into chunks gives the result of one pass.
// Paged layout as in attention_decode.wgsl: slot s of head row r is at pool block
// block_table[r * table_stride + s / BLOCK_SIZE], offset s % BLOCK_SIZE.
//
// A workgroup (tile, kv head * head groups + head group) owns BM query rows: TQ = BM / GQ tokens x
// the GQ query heads that share one kv head (row r = token r / GQ, head r % GQ), so each K/V tile is
// loaded once for all of them. The Q tile (pre-scaled by scale * log2(e)) stays in workgroup
// memory; the loop over K/V tiles of BK slots keeps a running max and sum per row (online softmax in
// base 2) and rescales the output accumulators, which live in registers. No [T, T] score matrix.
//
// HEADWISE (head-wise KV, docs/headwise.md): kv head h reads column c = column_of[h] of this layer
// (seq_meta[column_base + h]), head row head_row_base + c. A full column (c < full_columns) is read
// as above. A ring column (sink + recent slots) is read as it was before the chunk, its
// min(before, sink + recent) slots (before = ctx_len - q_len) at positions ring_pos(i, before),
// followed by the chunk's own keys from the new rows k_new / v_new (the chunk's ring slots are
// written after this dispatch, so slots that its later tokens overwrite still hold what its earlier
// queries need); keys are masked by true position: a query at p sees k <= p with k < sink or
// k > p - recent. Of the new keys a tile reads only those before the sink and those within the
// window of its first query, so a ring costs O(sink + recent) per query, not O(context).
//
// Per K/V tile: K tile -> barrier -> S = Q K^T (each invocation a SR x SC register tile) -> barrier ->
// row pass (one invocation per row: mask, max, exp2, sum) while the V tile overwrites the K tile ->
// barrier -> O += P V (each invocation OR rows x one vec4 column chunk) -> barrier.

override HEAD_DIM: u32 = 128;
override BLOCK_SIZE: u32 = 16;
override GQ: u32 = 8;
override WG: u32 = 128;
override BM: u32 = 32;   // query rows per tile (a multiple of 16, <= 64)
override BK: u32 = 16;   // slots per K/V tile (a multiple of 8, <= 32)
override KV_F16: bool = false;
override HEADWISE: bool = false;

override D4: u32 = HEAD_DIM / 4u;
override DP: u32 = D4 + 1u;          // padded row stride (vec4) of the Q and K/V tiles: no bank conflicts
override PS: u32 = BK + 1u;          // padded row stride of the score tile
override TQ: u32 = BM / GQ;          // tokens per tile
override TCOLS: u32 = 8u;
override TROWS: u32 = WG / TCOLS;
override SR: u32 = BM / TROWS;       // score rows per invocation (<= 4)
override SC: u32 = BK / TCOLS;       // score columns per invocation (<= 4)
override RG: u32 = WG / D4;          // row groups in the P.V phase
override OR: u32 = (BM + RG - 1u) / RG; // output rows per invocation (<= 16)
override QS_LEN: u32 = BM * DP;
override KS_LEN: u32 = BK * DP;
override PS_LEN: u32 = BM * PS;

const NEG_BIG: f32 = -1.0e30;

struct Params {
  n_heads: u32,
  n_kv_heads: u32,
  group: u32,        // n_heads / n_kv_heads
  table_stride: u32,
  scale_log2: f32,   // softmax scale * log2(e)
  num_seqs: u32,
  tiles_per_seq: u32,
  column_base: u32,  // HEADWISE: index in seq_meta of this layer's column table row
  full_columns: u32, // HEADWISE: columns [0, full_columns) keep full history, the others are rings
  sink: u32,
  recent: u32,
  new_stride: u32,   // vec4s per token row of k_new / v_new
  k_offset: u32,     // vec4s to kv head 0 of a k_new row
  v_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_pool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> v_pool: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> block_table: array<u32>;
@group(0) @binding(5) var<storage, read> seq_meta: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
// HEADWISE: this step's new K (after RoPE) and V rows, f32. Unused (any small buffer) otherwise.
@group(0) @binding(7) var<storage, read> k_new: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> v_new: array<vec4<f32>>;

var<workgroup> qs: array<vec4<f32>, QS_LEN>;
var<workgroup> kvs: array<vec4<f32>, KS_LEN>;
var<workgroup> ps: array<f32, PS_LEN>;
var<workgroup> m_s: array<f32, BM>;
var<workgroup> l_s: array<f32, BM>;
var<workgroup> a_s: array<f32, BM>;
var<workgroup> kpos: array<u32, BK>; // ring columns: the true position of each key of the tile

//#include paged_kv

// Position of the token a ring holds at slot index i after `before` tokens (ringPosition in src/kv/paged_kv.ts).
fn ring_pos(i: u32, before: u32) -> u32 {
  if (i < p.sink || before <= p.sink + p.recent) { return i; }
  let newest = (before - 1u - p.sink) % p.recent;
  return before - 1u - (newest + p.recent - (i - p.sink)) % p.recent;
}

// Ring key `vk` of a tile's key list: the held slots [0, held), then the chunk's new keys j in
// [0, nb) (before the sink) and from jlo on. Returns (1 for a new row / 0 for a pool slot, the row
// of k_new or the pool slot, the key's position).
fn ring_key(vk: u32, row: u32, before: u32, held: u32, q_start: u32, nb: u32, jlo: u32) -> vec3<u32> {
  if (vk < held) { return vec3(0u, slot_of(row, vk), ring_pos(vk, before)); }
  let u = vk - held;
  let j = select(jlo + u - nb, u, u < nb);
  return vec3(1u, q_start + j, before + j);
}

fn window_visible(key: u32, query: u32) -> bool {
  return key <= query && (key < p.sink || key + p.recent > query);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let flat = wg.x + wg.y * nwg.x;
  let seq = flat / p.tiles_per_seq;
  if (seq >= p.num_seqs) { return; }
  // Highest tiles (longest causal range) first: they are the slowest, so start them earliest.
  let tile = p.tiles_per_seq - 1u - flat % p.tiles_per_seq;
  let q_start = seq_meta[seq * 4u];
  let q_len = seq_meta[seq * 4u + 1u];
  let ctx_len = seq_meta[seq * 4u + 2u];
  let t0 = tile * TQ;
  if (t0 >= q_len) { return; }
  let head_groups = p.group / GQ;
  let kvh = wg.z / head_groups;
  var row = seq_meta[seq * 4u + 3u] + kvh;
  let h0 = kvh * p.group + (wg.z % head_groups) * GQ;
  let ntok = min(TQ, q_len - t0);
  let nrows = ntok * GQ;
  let before = ctx_len - q_len;
  let pos0 = before + t0;          // position of the tile's first token
  var kv_end = pos0 + ntok;        // the tile needs slots [0, kv_end) (ring: keys of its list)
  var ring = false;
  var held = 0u;
  var nb = 0u;
  var jlo = 0u;
  if (HEADWISE) {
    let column = seq_meta[p.column_base + kvh];
    row = seq_meta[seq * 4u + 3u] + column;
    ring = column >= p.full_columns;
    if (ring) {
      held = min(before, p.sink + p.recent);
      nb = min(select(0u, p.sink - before, p.sink > before), t0 + ntok);
      jlo = max(nb, select(0u, t0 + 1u - p.recent, t0 + 1u > p.recent));
      kv_end = held + nb + t0 + ntok - jlo;
    }
  }

  for (var i = lid; i < BM * D4; i += WG) {
    let r = i / D4;
    let c = i % D4;
    var v = vec4(0.0);
    if (r < nrows) { v = q[((q_start + t0 + r / GQ) * p.n_heads + h0 + r % GQ) * D4 + c] * p.scale_log2; }
    qs[r * DP + c] = v;
  }
  if (lid < BM) {
    m_s[lid] = NEG_BIG;
    l_s[lid] = 0.0;
  }

  let tr = lid / TCOLS;
  let tc = lid % TCOLS;
  let rg = lid / D4;
  let cc = lid % D4;
  var acc: array<vec4<f32>, 16>;

  for (var k0 = 0u; k0 < kv_end; k0 += BK) {
    let kn = min(BK, kv_end - k0);
    for (var i = lid; i < BK * D4; i += WG) {
      let j = i / D4;
      let c = i % D4;
      var v = vec4(0.0);
      if (j < kn) {
        if (ring) {
          let key = ring_key(k0 + j, row, before, held, q_start, nb, jlo);
          if (key.x == 1u) { v = k_new[key.y * p.new_stride + p.k_offset + kvh * D4 + c]; } else { v = load_k(key.y, c); }
          if (c == 0u) { kpos[j] = key.z; }
        } else {
          v = load_k(slot_of(row, k0 + j), c);
        }
      }
      kvs[j * DP + c] = v;
    }
    workgroupBarrier();

    // S tile: rows tr + i * TROWS, columns tc + j * TCOLS.
    // Explicit initializer: without one, Dawn + SwiftShader keep the previous iteration's value.
    var s = array<f32, 16>();
    for (var c = 0u; c < D4; c++) {
      var qv: array<vec4<f32>, 4>;
      for (var i = 0u; i < SR; i++) { qv[i] = qs[(tr + i * TROWS) * DP + c]; }
      for (var j = 0u; j < SC; j++) {
        let kv = kvs[(tc + j * TCOLS) * DP + c];
        for (var i = 0u; i < SR; i++) { s[i * SC + j] += dot(qv[i], kv); }
      }
    }
    for (var i = 0u; i < SR; i++) {
      for (var j = 0u; j < SC; j++) { ps[(tr + i * TROWS) * PS + tc + j * TCOLS] = s[i * SC + j]; }
    }
    workgroupBarrier();

    // Row pass: causal (ring: window) mask, running max and sum, probabilities in place.
    if (lid < BM) {
      let r = lid;
      let pos = pos0 + r / GQ;
      var valid = 0u; // full columns: keys [0, valid) of the tile are visible
      if (r < nrows && !ring) {
        if (pos + 1u > k0) { valid = min(pos + 1u - k0, BK); }
      }
      let m_old = m_s[r];
      var m_new = m_old;
      for (var j = 0u; j < BK; j++) {
        if (j < valid || (ring && r < nrows && j < kn && window_visible(kpos[j], pos))) { m_new = max(m_new, ps[r * PS + j]); }
      }
      let alpha = exp2(m_old - m_new);
      var sum = 0.0;
      for (var j = 0u; j < BK; j++) {
        var pr = 0.0;
        if (j < valid || (ring && r < nrows && j < kn && window_visible(kpos[j], pos))) { pr = exp2(ps[r * PS + j] - m_new); }
        ps[r * PS + j] = pr;
        sum += pr;
      }
      m_s[r] = m_new;
      l_s[r] = l_s[r] * alpha + sum;
      a_s[r] = alpha;
    }
    // V tile into the K tile's memory (S is done with it).
    for (var i = lid; i < BK * D4; i += WG) {
      let j = i / D4;
      let c = i % D4;
      var v = vec4(0.0);
      if (j < kn) {
        if (ring) {
          let key = ring_key(k0 + j, row, before, held, q_start, nb, jlo);
          if (key.x == 1u) { v = v_new[key.y * p.new_stride + p.v_offset + kvh * D4 + c]; } else { v = load_v(key.y, c); }
        } else {
          v = load_v(slot_of(row, k0 + j), c);
        }
      }
      kvs[j * DP + c] = v;
    }
    workgroupBarrier();

    // O += P V: rows rg + i * RG, column chunk cc.
    for (var i = 0u; i < OR; i++) {
      let r = rg + i * RG;
      if (r < BM) { acc[i] *= a_s[r]; }
    }
    for (var j = 0u; j < kn; j++) {
      let v = kvs[j * DP + cc];
      for (var i = 0u; i < OR; i++) {
        let r = rg + i * RG;
        if (r < BM) { acc[i] += ps[r * PS + j] * v; }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < OR; i++) {
    let r = rg + i * RG;
    if (r < nrows) {
      out[((q_start + t0 + r / GQ) * p.n_heads + h0 + r % GQ) * D4 + cc] = acc[i] / l_s[r];
    }
  }
}
