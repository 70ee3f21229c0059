// The decode attention kernel's parts (docs: attention_decode.wgsl) that attention_decode.wgsl's
// `main` and attention_decode_subgroup.wgsl's share: everything but the scores and their maxima.

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

// What one workgroup attends: GQ consecutive query rows from qrow0 against slots [start, start +
// cnt) of head row `row`, which holds n slots.
struct Task {
  qrow0: u32,
  row: u32,
  n: u32,
  start: u32,
  cnt: u32,
}

fn decode_task(wg: vec3u) -> Task {
  let head_groups = p.group / GQ;
  let b = (wg.y / head_groups) / p.n_kv_heads;
  let kvh = (wg.y / head_groups) % p.n_kv_heads;
  let h0 = kvh * p.group + (wg.y % head_groups) * GQ;
  var row = b * p.n_kv_heads + kvh;
  if (HEADWISE) { row = b * p.n_kv_heads + column_of[p.column_base + kvh]; }
  let n = kv_len[row];
  let start = wg.x * PART;
  return Task(b * p.n_heads + h0, row, n, start, select(0u, min(n - start, PART), start < n));
}

// An empty partition: zeros (DIRECT) or the empty partial (NEG_BIG, 0).
fn write_empty(t: Task, part: u32, lid: u32) {
  if (DIRECT) {
    for (var i = lid; i < GQ * D4; i += WG) { out[t.qrow0 * D4 + i] = vec4(0.0); }
  } else if (lid < GQ) {
    part_ml[(t.qrow0 + lid) * p.part_stride + p.part_base + part] = vec2(NEG_BIG, 0.0);
  }
}

// The GQ scaled queries into qs.
fn load_q(t: Task, lid: u32) {
  for (var i = lid; i < GQ * D4; i += WG) { qs[i] = q[t.qrow0 * D4 + i] * p.scale; }
  workgroupBarrier();
}

// With the scores in sm and their maxima m: probabilities in place, P.V, and the output (or partial).
fn attend(task: Task, part: u32, m: array<f32, 8>, lid: u32) {
  let cnt = task.cnt;
  let row = task.row;
  let qrow0 = task.qrow0;
  let start = task.start;
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
