// Token selection over [rows, cols] f32 logits, one workgroup per row (rows beyond the
// per-dimension workgroup limit fold into a 2D grid).
//
//   argmax        greedy token: the lowest index holding the largest logit.
//   sample        temperature, min-p, top-k, top-p, then one inverse-CDF draw from a counter-based
//                 RNG (Philox4x32-10 keyed by the 64-bit seed, counter = the token's index).
//   draw_hashes   the RNG alone: each row's first Philox word and uniform (tests check the
//                 TypeScript mirror in kernels/sampling.ts against it bit for bit).
//   philox_block  Philox4x32-10 of arbitrary (counter, key) blocks, for the known-answer test.
//
// Logits are read exactly as given, so a mask or bias kernel can rewrite them in between: any
// non-finite logit (-inf is the mask value; +inf and NaN are treated alike) is excluded, tested on
// the bits so that the outcome does not depend on a GPU's handling of infinities. A row without a
// finite logit yields NONE (0xffffffff) with probability 0.
//
// sample, per row (all thresholds are on the logit itself, so ties are ties of logits):
//   1. M = max finite logit, n = number of finite logits. T <= 0 (or NaN, or 1/T not finite): argmax.
//   2. Weights w = exp((l - M) / T) (softmax numerators; max weight 1).
//   3. Min-p (when min_p_offset is finite): only logits l >= M + min_p_offset stay candidates, where
//      the host sets min_p_offset = T * ln(min_p): w >= min_p, i.e. probability >= min_p times the
//      largest, decided on the logit (one f32 add) so that it does not depend on the GPU's exp.
//      n becomes the number of those logits.
//   4. Top-k: the largest threshold L whose set {l >= L} has at least k members, i.e. the k largest
//      logits plus every logit tied with the k-th (topK 0 or >= n keeps all).
//   5. Top-p: the largest threshold L' >= L whose set keeps mass >= topP * mass(top-k set): the
//      smallest set of highest-probability tokens reaching topP of the renormalised top-k mass,
//      plus every token tied with the last one taken (topP >= 1 or NaN: off; topP <= 0: the tie
//      group of the maximum).
//   6. u in [0, 1) from Philox(seed, counter); the token is the first kept index, in index order,
//      whose inclusive prefix sum of kept weights exceeds u * (kept mass).
//   Output probability: w(token) / kept mass, the probability under the distribution drawn from
//   (1 for greedy rows).
//
// No sort: thresholds are found by bisection over the order-preserving integer keys of the logits.
// Each step is one pass with one fused reduction (count, mass, nearest keys on both sides) and
// moves lo or hi onto an element key, so a stage takes at most min(32, distinct keys) steps and
// stops as soon as the kept set is settled. While the set at the current lower threshold is larger
// than CAP the steps read the row from global memory; once it fits, the set is compacted (in index
// order) into workgroup memory and every later step, and the draw, runs there. Simulated on
// N(0, 3) logits over 152k columns with top-k 40 / top-p 0.9 and CAP 2048: 8 passes over the row
// (max, 6 steps, compaction), then ~19 steps on chip. A top-p-only row whose nucleus exceeds CAP
// stays in global memory (~22 passes). The draw is a workgroup prefix sum over tiles of WG * E
// elements (E contiguous elements per invocation) and the first tile whose sum passes u * mass.
//#include reduce

override WG: u32 = 256;
// Candidates held in workgroup memory (a multiple of WG; 8 bytes each).
override CAP: u32 = 1024;
// Contiguous elements per invocation in the ordered (index-order) passes over global memory.
override TILE_E: u32 = 8;

const NONE: u32 = 0xffffffffu;
const NEG_MAX: f32 = -0x1.fffffep+127f;

struct Params {
  rows: u32,
  cols: u32,
}

struct SampleParams {
  temperature: f32,
  top_k: u32,
  top_p: f32,
  // T * ln(min_p); -inf (any non-finite value): min-p off
  min_p_offset: f32,
  // the 64-bit seed as two's complement words
  seed_lo: u32,
  seed_hi: u32,
  counter: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> token_probs: array<f32>;
@group(0) @binding(4) var<storage, read> sparams: array<SampleParams>;

var<workgroup> cand_logit: array<f32, CAP>;
var<workgroup> cand_idx: array<u32, CAP>;
var<workgroup> scan_f: array<f32, WG>;
var<workgroup> probe_tree: array<vec4<f32>, WG>;
var<workgroup> bc_f: vec2<f32>;
var<workgroup> bc_u: u32;
var<workgroup> red_u: atomic<u32>;

// ---- RNG: Philox4x32-10 (Salmon et al., SC'11; the generator of cuRAND, PyTorch and JAX) ----
// Counter-based: a draw is a pure function of (key, counter), so it never depends on the batch or
// on how often a sequence was preempted. Key = the 64-bit seed, counter = (token index, 0, 0, 0).

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// High word of the 64-bit product a * b (WGSL has no 32x32->64 multiply): 16-bit limbs.
fn mul_hi(a: u32, b: u32) -> u32 {
  let al = a & 0xffffu;
  let ah = a >> 16u;
  let bl = b & 0xffffu;
  let bh = b >> 16u;
  let lh = al * bh;
  let hl = ah * bl;
  let mid = ((al * bl) >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
  return ah * bh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
  var c = counter;
  var k = key;
  for (var r = 0u; r < 10u; r++) {
    if (r > 0u) { k += vec2(PHILOX_W0, PHILOX_W1); }
    let hi0 = mul_hi(PHILOX_M0, c.x);
    let hi1 = mul_hi(PHILOX_M1, c.z);
    c = vec4(hi1 ^ c.y ^ k.x, PHILOX_M1 * c.z, hi0 ^ c.w ^ k.y, PHILOX_M0 * c.x);
  }
  return c;
}

// The draw's 32 random bits: the first word of Philox((counter, 0, 0, 0), seed).
fn draw_hash(sp: SampleParams) -> u32 {
  return philox4x32_10(vec4(sp.counter, 0u, 0u, 0u), vec2(sp.seed_lo, sp.seed_hi)).x;
}

// The top 24 bits as a float in [0, 1), exact in f32.
fn draw_uniform(sp: SampleParams) -> f32 {
  return f32(draw_hash(sp) >> 8u) * (1.0 / 16777216.0);
}

// ---- element helpers ----

fn is_finite(v: f32) -> bool {
  return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// Order-preserving u32 key of a finite float (a < b  <=>  okey(a) < okey(b)); -0 keys as +0.
fn okey(v: f32) -> u32 {
  var b = bitcast<u32>(v);
  if (b == 0x80000000u) { b = 0u; }
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn kept(v: f32, lam: u32) -> bool {
  return is_finite(v) && okey(v) >= lam;
}

fn weight(v: f32, m: f32, inv_t: f32) -> f32 {
  return exp((v - m) * inv_t);
}

// The current source of elements: the row in global memory, or the compacted candidates.
fn src_logit(on_chip: bool, base: u32, j: u32) -> f32 {
  if (on_chip) { return cand_logit[j]; }
  return logits[base + j];
}

fn src_index(on_chip: bool, j: u32) -> u32 {
  if (on_chip) { return cand_idx[j]; }
  return j;
}

// ---- workgroup reductions whose results are uniform (they may steer loops with barriers) ----

fn uniform_sum(v: f32, lid: u32) -> f32 {
  let s = wg_sum(v, lid);
  if (lid == 0u) { bc_f = vec2(s, 0.0); }
  return workgroupUniformLoad(&bc_f).x;
}

// One tree for a bisection step: sums in x, y (count, mass); maxima in z, w. A step is bound by
// barrier latency, so this replaces four separate reductions (about 4x fewer barriers).
fn uniform_probe_reduce(v: vec4<f32>, lid: u32) -> vec4<f32> {
  probe_tree[lid] = v;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) {
      let a = probe_tree[lid];
      let b = probe_tree[lid + s];
      probe_tree[lid] = vec4(a.xy + b.xy, max(a.zw, b.zw));
    }
  }
  return workgroupUniformLoad(&probe_tree[0]);
}

fn uniform_max(v: f32, lid: u32) -> f32 {
  let m = wg_max(v, lid);
  if (lid == 0u) { bc_f = vec2(m, 0.0); }
  return workgroupUniformLoad(&bc_f).x;
}

// Minimum over the workgroup of v (NONE where an invocation has nothing to offer).
fn uniform_min_u32(v: u32, lid: u32) -> u32 {
  if (lid == 0u) { atomicStore(&red_u, NONE); }
  workgroupBarrier();
  if (v != NONE) { atomicMin(&red_u, v); }
  workgroupBarrier();
  if (lid == 0u) { bc_u = atomicLoad(&red_u); }
  return workgroupUniformLoad(&bc_u);
}

// Maximum over the workgroup of v (0 where an invocation has nothing to offer).
fn uniform_max_u32(v: u32, lid: u32) -> u32 {
  if (lid == 0u) { atomicStore(&red_u, 0u); }
  workgroupBarrier();
  if (v != 0u) { atomicMax(&red_u, v); }
  workgroupBarrier();
  if (lid == 0u) { bc_u = atomicLoad(&red_u); }
  return workgroupUniformLoad(&bc_u);
}

// Exclusive prefix sum over the workgroup (Hillis-Steele): (this invocation's prefix, total).
fn wg_exclusive_scan(v: f32, lid: u32) -> vec2<f32> {
  scan_f[lid] = v;
  for (var off = 1u; off < WG; off <<= 1u) {
    workgroupBarrier();
    let add = select(0.0, scan_f[lid - min(off, lid)], lid >= off);
    workgroupBarrier();
    scan_f[lid] += add;
  }
  workgroupBarrier();
  let excl = select(0.0, scan_f[lid - min(1u, lid)], lid > 0u);
  let total = workgroupUniformLoad(&scan_f[WG - 1u]);
  return vec2(excl, total);
}

// ---- row passes ----

struct RowMax {
  m: f32,    // largest finite logit (NEG_MAX if none)
  idx: u32,  // its lowest index (NONE if none)
  n: u32,    // number of finite logits (when counted)
}

fn row_max(base: u32, with_count: bool, lid: u32) -> RowMax {
  var m = NEG_MAX;
  var mi = NONE;
  var c = 0u;
  for (var i = lid; i < p.cols; i += WG) {
    let v = logits[base + i];
    if (is_finite(v)) {
      c += 1u;
      if (mi == NONE || v > m) {
        m = v;
        mi = i;
      }
    }
  }
  let row_m = uniform_max(m, lid);
  let idx = uniform_min_u32(select(NONE, mi, mi != NONE && m == row_m), lid);
  var n = 0u;
  if (with_count) { n = u32(uniform_sum(f32(c), lid)); }
  return RowMax(row_m, idx, n);
}

// One bisection step at threshold `mid` (lo <= mid): the set {key >= mid} and the keys nearest
// to mid on either side, so that the caller can move lo / hi onto element keys.
struct Probe {
  count: u32,  // elements with key >= mid (exact: f32 counts are exact below 2^24)
  mass: f32,   // their weight (when asked for)
  up: u32,     // smallest element key >= mid (only meaningful when count > 0)
  down1: u32,  // 1 + largest element key in [lo, mid) (see below when there is none)
}

fn probe(on_chip: bool, base: u32, n_src: u32, lo: u32, mid: u32, m: f32, inv_t: f32, with_mass: bool,
         lid: u32) -> Probe {
  var c = 0u;
  var s = 0.0;
  var up = -NEG_MAX;
  var down = NEG_MAX;
  for (var j = lid; j < n_src; j += WG) {
    let v = src_logit(on_chip, base, j);
    if (is_finite(v)) {
      let key = okey(v);
      if (key >= mid) {
        c += 1u;
        if (with_mass) { s += weight(v, m, inv_t); }
        up = min(up, v);
      } else if (key >= lo) {
        down = max(down, v);
      }
    }
  }
  // With nothing in [lo, mid) down stays NEG_MAX and down1 = okey(-FLT_MAX) + 1: still a key at
  // which the set equals the set at mid (no finite key lies below it), so hi may move there.
  let r = uniform_probe_reduce(vec4(f32(c), s, -up, down), lid);
  return Probe(u32(r.x), r.y, okey(-r.z), okey(r.w) + 1u);
}

// Copies the row's elements with key >= lam, in index order, into cand_logit / cand_idx.
// The caller has counted them: at most CAP.
fn compact(base: u32, lam: u32, lid: u32) {
  var written = 0u;
  for (var t0 = 0u; t0 < p.cols; t0 += WG * TILE_E) {
    let j0 = t0 + lid * TILE_E;
    var c = 0u;
    for (var e = 0u; e < TILE_E; e++) {
      let j = j0 + e;
      if (j < p.cols && kept(logits[base + j], lam)) { c += 1u; }
    }
    let s = wg_exclusive_scan(f32(c), lid);
    var pos = written + u32(s.x);
    if (c > 0u) {
      for (var e = 0u; e < TILE_E; e++) {
        let j = j0 + e;
        if (j < p.cols) {
          let v = logits[base + j];
          if (kept(v, lam)) {
            if (pos < CAP) {
              cand_logit[pos] = v;
              cand_idx[pos] = j;
            }
            pos += 1u;
          }
        }
      }
    }
    written += u32(s.y);
  }
  workgroupBarrier();
}

fn write_token(row: u32, token: u32, prob: f32) {
  tokens[row] = token;
  token_probs[row] = prob;
}

// Inverse-CDF draw in index order over the kept elements (key >= lam) of the current source:
// the first kept element whose inclusive prefix sum of weights exceeds `point` (= u * mass).
// f32 prefix sums are not exactly the mass that u was scaled by; every rounding case still
// returns a kept element of positive weight (the first such one of the owning invocation when
// its prefix already passed the point, the last one when the point lies past the total).
fn draw(on_chip: bool, base: u32, n_src: u32, lam: u32, m: f32, inv_t: f32, mass: f32, point: f32,
        row: u32, lid: u32) {
  let e_count = select(TILE_E, CAP / WG, on_chip);
  var carry = 0.0;
  var last = 0u;  // 1 + position of this invocation's last kept element of positive weight
  for (var t0 = 0u; t0 < n_src; t0 += WG * e_count) {
    let j0 = t0 + lid * e_count;
    var own = 0.0;
    for (var e = 0u; e < e_count; e++) {
      let j = j0 + e;
      if (j < n_src) {
        let v = src_logit(on_chip, base, j);
        if (kept(v, lam)) {
          let w = weight(v, m, inv_t);
          own += w;
          if (w > 0.0) { last = j + 1u; }
        }
      }
    }
    let s = wg_exclusive_scan(own, lid);
    let crosses = own > 0.0 && carry + s.x + own > point;
    let owner = uniform_min_u32(select(NONE, lid, crosses), lid);
    if (owner != NONE) {
      if (lid == owner) {
        var cum = carry + s.x;
        var pick = NONE;
        var pick_w = 0.0;
        var last_j = NONE;
        var last_w = 0.0;
        for (var e = 0u; e < e_count; e++) {
          let j = j0 + e;
          if (j < n_src) {
            let v = src_logit(on_chip, base, j);
            if (kept(v, lam)) {
              let w = weight(v, m, inv_t);
              if (w > 0.0) {
                cum += w;
                last_j = j;
                last_w = w;
                if (pick == NONE && cum > point) {
                  pick = j;
                  pick_w = w;
                }
              }
            }
          }
        }
        if (pick == NONE) {
          pick = last_j;
          pick_w = last_w;
        }
        write_token(row, src_index(on_chip, pick), pick_w / mass);
      }
      return;
    }
    carry += s.y;
  }
  // The point lies at or past the f32 total: the last kept element of positive weight.
  let j = uniform_max_u32(last, lid) - 1u;
  if (lid == 0u) {
    write_token(row, src_index(on_chip, j), weight(src_logit(on_chip, base, j), m, inv_t) / mass);
  }
}

// ---- entry points ----

@compute @workgroup_size(WG)
fn argmax(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_index) lid: u32) {
  let row = wg.x + wg.y * nwg.x;
  if (row >= p.rows) { return; }
  let rm = row_max(row * p.cols, false, lid);
  if (lid == 0u) { tokens[row] = rm.idx; }
}

@compute @workgroup_size(WG)
fn sample(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_index) lid: u32) {
  let row = wg.x + wg.y * nwg.x;
  if (row >= p.rows) { return; }
  let base = row * p.cols;
  let sp = sparams[row];

  let rm = row_max(base, true, lid);
  let m = rm.m;
  if (rm.idx == NONE) {
    if (lid == 0u) { write_token(row, NONE, 0.0); }
    return;
  }
  let inv_t = 1.0 / sp.temperature;
  if (!(sp.temperature > 0.0) || !is_finite(inv_t)) {
    if (lid == 0u) { write_token(row, rm.idx, 1.0); }
    return;
  }
  // Min-p: the candidates start at key(M + min_p_offset) (at most M's key), counted in one pass.
  var lo = 0u;
  var n = rm.n;
  if (is_finite(sp.min_p_offset)) {
    lo = okey(min(m + sp.min_p_offset, m));
    n = probe(false, base, p.cols, 0u, lo, m, inv_t, false, lid).count;
  }
  let k = select(min(sp.top_k, n), n, sp.top_k == 0u);

  // Bisection state: pred(lo) holds with clo elements at or above lo; pred(hi) fails, chi elements.
  var on_chip = false;
  var n_src = p.cols;
  var clo = n;
  var hi = okey(m) + 1u;
  var chi = 0u;

  // Top-k: largest lo with count(key >= lo) >= k. Each step moves lo up to the smallest element
  // key at or above mid, or hi down to just above the largest element key below mid, so a step
  // both halves the key range and removes at least one element from it: at most min(32, distinct
  // keys) steps. Settled when the count is exactly k or a single key separates lo from hi.
  loop {
    if (!on_chip && clo <= CAP) {
      compact(base, lo, lid);
      on_chip = true;
      n_src = clo;
    }
    if (hi - lo <= 1u || clo == k || clo - chi <= 1u) { break; }
    let mid = lo + (hi - lo) / 2u;
    let pr = probe(on_chip, base, n_src, lo, mid, m, inv_t, false, lid);
    if (pr.count >= k) {
      lo = clamp(pr.up, mid, hi - 1u);
      clo = pr.count;
    } else {
      hi = max(pr.down1, lo + 1u);
      chi = pr.count;
    }
  }
  var mass = probe(on_chip, base, n_src, lo, lo, m, inv_t, true, lid).mass;

  // Top-p: largest lo' >= lo whose set keeps mass >= topP * mass(top-k set), same stepping.
  if (sp.top_p < 1.0) {
    let goal = sp.top_p * mass;
    hi = okey(m) + 1u;
    chi = 0u;
    loop {
      if (!on_chip && clo <= CAP) {
        compact(base, lo, lid);
        on_chip = true;
        n_src = clo;
      }
      if (hi - lo <= 1u || clo - chi <= 1u) { break; }
      let mid = lo + (hi - lo) / 2u;
      let pr = probe(on_chip, base, n_src, lo, mid, m, inv_t, true, lid);
      if (pr.mass >= goal) {
        lo = clamp(pr.up, mid, hi - 1u);
        clo = pr.count;
        mass = pr.mass;
      } else {
        // lo + 1 guards against f32 sums of one set disagreeing across a compaction.
        hi = max(pr.down1, lo + 1u);
        chi = pr.count;
      }
    }
  }

  let u = draw_uniform(sp);
  draw(on_chip, base, n_src, lo, m, inv_t, mass, u * mass, row, lid);
}

@compute @workgroup_size(WG)
fn draw_hashes(@builtin(global_invocation_id) gid: vec3u) {
  // Same bindings as sample (the logits are not read), so one argument list serves both.
  _ = &logits;
  let row = gid.x;
  if (row >= p.rows) { return; }
  let sp = sparams[row];
  tokens[row] = draw_hash(sp);
  token_probs[row] = draw_uniform(sp);
}

@compute @workgroup_size(WG)
fn philox_block(@builtin(global_invocation_id) gid: vec3u) {
  // In place over `tokens`, 8 words per block: counter (4 words) and key (2) in, the output's 4
  // words written over the counter. `logits` is bound only to keep the binding numbers dense.
  _ = &logits;
  let row = gid.x;
  if (row >= p.rows) { return; }
  let b = row * 8u;
  let out = philox4x32_10(vec4(tokens[b], tokens[b + 1u], tokens[b + 2u], tokens[b + 3u]), vec2(tokens[b + 4u], tokens[b + 5u]));
  tokens[b] = out.x;
  tokens[b + 1u] = out.y;
  tokens[b + 2u] = out.z;
  tokens[b + 3u] = out.w;
}
