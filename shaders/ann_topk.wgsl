// Key index (src/ann/): the K largest finite scores of each row, one workgroup per row.
//
// Scores are mapped to u32 keys that order like the floats (non-finite -> 0: not a candidate; with
// USE_IDS, a negative id is not a candidate either), and
// the K-th largest key is found by a radix select, 8 bits per pass from the top (4 passes of a
// 256-bin histogram in workgroup memory). A last pass writes the ids of the keys above it and as
// many of those equal to it as K needs. Output per row, in no particular order: ids (the column,
// or ids[col] when USE_IDS) and scores at out_ids / out_scores[row * out_stride + t] for t < K,
// -1 / LOWEST (-3.4e38) where the row has fewer than K candidates; count[row] = candidates written;
// thr[row] = the K-th score, or LOWEST when the row had fewer than K (any finite score qualifies).

override WG: u32 = 256;
override USE_IDS: bool = false;
// stands for -inf (a constant -inf is not a valid WGSL f32)
const LOWEST: f32 = -0x1.fffffep+127f;

struct Params {
  rows: u32,
  cols: u32,
  in_stride: u32,
  k: u32,
  out_stride: u32,
  out_row0: u32,   // outputs of row r go to row out_row0 + r
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out_ids: array<i32>;
@group(0) @binding(4) var<storage, read_write> out_scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> count: array<u32>;
@group(0) @binding(6) var<storage, read_write> thr: array<f32>;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> sel_prefix: u32;
var<workgroup> sel_remaining: u32;
var<workgroup> n_valid: atomic<u32>;
var<workgroup> n_total: u32;
var<workgroup> n_above: atomic<u32>;
var<workgroup> n_tied: atomic<u32>;

fn order_key(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7f800000u) == 0x7f800000u) { return 0u; }
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// the order key of column i of the row at `base`; with USE_IDS a negative id is not a candidate
fn cand_key(base: u32, i: u32) -> u32 {
  if (USE_IDS && ids[base + i] < 0) { return 0u; }
  return order_key(scores[base + i]);
}

fn key_value(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = wg.x + wg.y * nwg.x;
  if (row >= p.rows) { return; }
  let base = row * p.in_stride;
  let out_row = p.out_row0 + row;
  let out_base = out_row * p.out_stride;
  for (var t = lid; t < p.k; t += WG) {
    out_ids[out_base + t] = -1;
    out_scores[out_base + t] = LOWEST;
  }
  if (lid == 0u) {
    sel_prefix = 0u;
    sel_remaining = p.k;
    atomicStore(&n_valid, 0u);
    atomicStore(&n_above, 0u);
    atomicStore(&n_tied, 0u);
  }
  var valid = 0u;
  for (var i = lid; i < p.cols; i += WG) {
    if (cand_key(base, i) != 0u) { valid += 1u; }
  }
  atomicAdd(&n_valid, valid);
  workgroupBarrier();
  if (lid == 0u) { n_total = atomicLoad(&n_valid); }
  let total = workgroupUniformLoad(&n_total);
  // fewer candidates than K: all of them, above the impossible key 0
  let select_all = total <= p.k;
  var mask = 0u;
  for (var round = 0u; round < 4u && !select_all; round++) {
    let shift = 24u - 8u * round;
    for (var b = lid; b < 256u; b += WG) { atomicStore(&hist[b], 0u); }
    workgroupBarrier();
    let prefix = sel_prefix;
    for (var i = lid; i < p.cols; i += WG) {
      let key = cand_key(base, i);
      if (key != 0u && (key & mask) == prefix) { atomicAdd(&hist[(key >> shift) & 255u], 1u); }
    }
    workgroupBarrier();
    if (lid == 0u) {
      var cum = 0u;
      for (var b = 255i; b >= 0i; b--) {
        let h = atomicLoad(&hist[b]);
        if (cum + h >= sel_remaining) {
          sel_prefix = prefix | (u32(b) << shift);
          sel_remaining -= cum;
          break;
        }
        cum += h;
      }
    }
    mask |= 255u << shift;
    workgroupBarrier();
  }
  // the K-th key (select_all: 0, so every candidate is above it and none ties)
  let kth = select(sel_prefix, 0u, select_all);
  let ties = select(sel_remaining, 0u, select_all);
  let above = min(total, p.k) - ties;
  for (var i = lid; i < p.cols; i += WG) {
    let s = scores[base + i];
    let key = cand_key(base, i);
    var slot = p.k;
    if (key > kth) {
      slot = atomicAdd(&n_above, 1u);
    } else if (key == kth && key != 0u) {
      let t = atomicAdd(&n_tied, 1u);
      if (t < ties) { slot = above + t; }
    }
    if (slot < p.k) {
      var id = i32(i);
      if (USE_IDS) { id = ids[base + i]; }
      out_ids[out_base + slot] = id;
      out_scores[out_base + slot] = s;
    }
  }
  if (lid == 0u) {
    count[out_row] = min(total, p.k);
    thr[out_row] = select(key_value(kth), LOWEST, select_all);
  }
}
