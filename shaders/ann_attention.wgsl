// Decode attention with a key index (src/ann/ann_attention.ts): the helpers that turn a head row's
// static window and the keys its index found into a slot table that attention_decode.wgsl reads
// with BLOCK_SIZE 1 (each table entry one pool slot), so the attention itself is the decode kernel.
//
// `collect`: copies sampled prefill queries into a head row's build-query reservoir. Invocation
// (pair, head, g, c): q[token * n_heads + kv_head * group + g] chunk c -> res[(head * b_slots +
// slot) * group + g] (pairs [n, 2] = (token row, reservoir slot), heads [h] = kv head of each
// reservoir block).
//
// `mark`: sets bit id of row i's bitmap for every found id in [lo_i, hi_i) (the middle: past the
// sink, below the first key not yet indexed); -1 and other ids are ignored. One bit per key makes
// the union of the group's lists, without duplicates, in key order (so the attention's sum order
// does not depend on the order the search wrote its ids in).
//
// `gather`: workgroup i writes row dst_i of the slot table: the static window's slots (positions
// [0, lo_i) and [hi_i, n_i)), then the slot of every key whose bit is set, in key order; and
// lengths[dst_i]. Rows of the table that no workgroup writes keep the length the caller filled
// (0: that head row attends to nothing in this pass).

override HEAD_DIM: u32 = 128;
override BLOCK_SIZE: u32 = 16;
override KV_F16: bool = false;
override D4: u32 = HEAD_DIM / 4u;
const WG: u32 = 256u;

struct Params {
  table_stride: u32, // blocks per head row in block_table (the model's)
  rows: u32,         // mark / gather: indexed head rows; collect: pairs
  words: u32,        // bitmap words per row
  ids_per_row: u32,  // mark: ids per row (group * k)
  out_stride: u32,   // gather: slots per row of the slot table
  n_heads: u32,
  group: u32,
  heads: u32,        // collect: reservoir blocks (kv heads sampled)
  b_slots: u32,      // collect: reservoir slots per kv head
}

// Per indexed head row: (kv head row in block_table, n = its keys, lo, hi, dst row of the slot table).
struct RowMeta {
  row: u32,
  n: u32,
  lo: u32,
  hi: u32,
  dst: u32,
  _a: u32,
  _b: u32,
  _c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

//#include paged_kv

// Each entry binds from 1 in its own order (variables of different entries share numbers).
// collect
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> pairs: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> heads: array<u32>;
@group(0) @binding(4) var<storage, read_write> res: array<vec4<f32>>;
// mark
@group(0) @binding(1) var<storage, read> row_meta: array<RowMeta>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> bits: array<atomic<u32>>;
// gather (row_meta as above)
@group(0) @binding(2) var<storage, read> bits_in: array<u32>;
@group(0) @binding(3) var<storage, read> block_table: array<u32>;
@group(0) @binding(4) var<storage, read_write> table_out: array<u32>;
@group(0) @binding(5) var<storage, read_write> lengths: array<u32>;
// Declared for paged_kv.wgsl's load_k / load_v; never bound.
@group(0) @binding(14) var<storage, read> k_pool: array<vec4<u32>>;
@group(0) @binding(15) var<storage, read> v_pool: array<vec4<u32>>;

var<workgroup> scan: array<u32, WG>;

@compute @workgroup_size(64)
fn collect(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * 64u + lid;
  let per_pair = p.heads * p.group * D4;
  if (i >= p.rows * per_pair) { return; }
  let pr = pairs[i / per_pair];
  let r = i % per_pair;
  let hi = r / (p.group * D4);
  let g = (r / D4) % p.group;
  let c = r % D4;
  res[((hi * p.b_slots + pr.y) * p.group + g) * D4 + c] = q[(pr.x * p.n_heads + heads[hi] * p.group + g) * D4 + c];
}

@compute @workgroup_size(64)
fn mark(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * 64u + lid;
  if (i >= p.rows * p.ids_per_row) { return; }
  let m = row_meta[i / p.ids_per_row];
  let id = ids[i];
  if (id < 0 || u32(id) < m.lo || u32(id) >= m.hi) { return; }
  let r = i / p.ids_per_row;
  atomicOr(&bits[r * p.words + u32(id) / 32u], 1u << (u32(id) & 31u));
}

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg.x;
  let m = row_meta[r];
  let out = m.dst * p.out_stride;
  // the static window: [0, lo) then [hi, n)
  let n_static = m.lo + (m.n - m.hi);
  for (var t = lid; t < n_static; t += WG) {
    let s = select(m.hi + (t - m.lo), t, t < m.lo);
    table_out[out + t] = slot_of(m.row, s);
  }
  // the found keys: each invocation takes a contiguous run of bitmap words; an exclusive scan of
  // their popcounts gives where its keys go
  let words = (m.hi + 31u) / 32u;
  let per = (words + WG - 1u) / WG;
  let w0 = min(lid * per, words);
  let w1 = min(w0 + per, words);
  var cnt = 0u;
  for (var w = w0; w < w1; w++) { cnt += countOneBits(bits_in[r * p.words + w]); }
  scan[lid] = cnt;
  workgroupBarrier();
  for (var off = 1u; off < WG; off <<= 1u) {
    var v = 0u;
    if (lid >= off) { v = scan[lid - off]; }
    workgroupBarrier();
    scan[lid] += v;
    workgroupBarrier();
  }
  var at = n_static + scan[lid] - cnt;
  for (var w = w0; w < w1; w++) {
    var b = bits_in[r * p.words + w];
    while (b != 0u) {
      let j = countTrailingZeros(b);
      table_out[out + at] = slot_of(m.row, w * 32u + j);
      at += 1u;
      b &= b - 1u;
    }
  }
  if (lid == WG - 1u) { lengths[m.dst] = at; }
}
