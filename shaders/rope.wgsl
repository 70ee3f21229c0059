// Rotary position embedding, in place on x [tokens, heads, head_dim] f32. Pair j of a head is
// rotated by angle = positions[token] * freqs[j] (freqs: rope_dim/2 inverse frequencies computed
// on the CPU, scaling included):
//   x0' = x0 cos - x1 sin,  x1' = x0 sin + x1 cos
// NEOX = false pairs adjacent elements (2j, 2j+1) (llama.cpp's normal mode); NEOX = true pairs
// (j, j + rope_dim/2). Elements at and beyond rope_dim are left untouched (partial rotary).
//
// Entry points (both take the same bindings; x is viewed as vec4 by the first, as f32 by the second):
//   main_vec4: one vec4 of x per invocation (normal: two pairs; neox: a vec4 from each half, four
//              pairs), so each warp reads and writes contiguous 16-byte words. Needs head_dim % 4 == 0
//              and rope_dim % 4 == 0 (normal) or rope_dim % 8 == 0 (neox).
//   main_scalar: one pair per invocation, any even rope_dim.
//   rope_kv:    the attention input step of a forward pass in one dispatch: from the fused q/k/v
//              projection rows qkv [tokens, heads + 2 * kv_heads, head_dim] it writes q rotated to
//              q_out [tokens, heads, head_dim], k rotated and v as it is to the paged f32 K/V pools
//              at the slots of slot_mapping (kv_cache.wgsl's layout; 0xffffffff skips a row). One
//              pair per invocation, rotated with the same f32 operations as main_scalar. With
//              KEEP_K, k rotated is also written back into qkv in place (head-wise KV: a ring's
//              prefill reads the chunk's own keys from there, and writes them to the pool after it).
//              WRITE_KV = false leaves the pools alone (f16 pools: kv_cache.wgsl packs the rows
//              from qkv afterwards; a packed word holds two values, which two invocations own here).
// Invocations are numbered over a 2D grid of workgroups (wg.x + wg.y * num_workgroups.x).

override WG: u32 = 256;
override NEOX: bool = false;
override KEEP_K: bool = false;
override WRITE_KV: bool = true;

struct Params {
  tokens: u32,
  heads: u32,
  head_dim: u32,
  rope_dim: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> x1: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> freqs: array<f32>;
// rope_kv only (its Params: tokens, heads, kv_heads, head_dim, rope_dim)
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_pool: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_pool: array<f32>;
@group(0) @binding(7) var<storage, read> slot_mapping: array<u32>;

// pi/2 split for Cody-Waite reduction: PIO2_HI has 8 significant bits, so k * PIO2_HI is exact
// for |k| < 2^16 (angles up to ~1e5 rad; beyond, the reduction's error stays ~|angle| * 2^-24, the
// size of the f32 angle's own rounding). PIO2_LO is pi/2 - PIO2_HI.
const PIO2_HI: f32 = 1.5703125;
const PIO2_LO: f32 = 4.838267948965580e-4;
const TWO_OVER_PI: f32 = 0.6366197723675814;

// (cos, sin) of an f32 angle of any magnitude, to a few f32 ulps. WGSL bounds the built-in sin/cos
// only to 2^-11 absolute on [-pi, pi] (and some implementations are that coarse), so the angle is
// reduced to r in about [-pi/4, pi/4] plus a quadrant, and sin/cos of r come from their Taylor
// series (truncation error below 2e-9 there). A few dozen FMAs per pair cost nothing in this
// memory-bound kernel.
fn cos_sin(angle: f32) -> vec2<f32> {
  let k = round(angle * TWO_OVER_PI);
  let r = fma(-k, PIO2_LO, fma(-k, PIO2_HI, angle));
  let r2 = r * r;
  let s = r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0))));
  let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0)))));
  // angle = r + q * pi/2
  switch (i32(k) & 3) {
    case 0: { return vec2<f32>(c, s); }
    case 1: { return vec2<f32>(-s, c); }
    case 2: { return vec2<f32>(-c, -s); }
    default: { return vec2<f32>(s, -c); }
  }
}

fn invocation(wg: vec3u, nwg: vec3u, lid: u32) -> u32 {
  return (wg.x + wg.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn main_vec4(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
             @builtin(local_invocation_index) lid: u32) {
  // vec4 words of rotated data per head
  var units = p.rope_dim / 4u;
  if (NEOX) { units = p.rope_dim / 8u; }
  let g = invocation(wg, nwg, lid);
  if (g >= p.tokens * p.heads * units) { return; }
  let row = g / units;
  let u = g - row * units;
  let pos = f32(positions[row / p.heads]);
  let base = row * (p.head_dim / 4u);
  if (NEOX) {
    let lo_i = base + u;
    let hi_i = lo_i + p.rope_dim / 8u;
    let f = 4u * u;
    let cs0 = cos_sin(pos * freqs[f]);
    let cs1 = cos_sin(pos * freqs[f + 1u]);
    let cs2 = cos_sin(pos * freqs[f + 2u]);
    let cs3 = cos_sin(pos * freqs[f + 3u]);
    let c = vec4<f32>(cs0.x, cs1.x, cs2.x, cs3.x);
    let s = vec4<f32>(cs0.y, cs1.y, cs2.y, cs3.y);
    let lo = x4[lo_i];
    let hi = x4[hi_i];
    x4[lo_i] = lo * c - hi * s;
    x4[hi_i] = lo * s + hi * c;
  } else {
    let i = base + u;
    let cs0 = cos_sin(pos * freqs[2u * u]);
    let cs1 = cos_sin(pos * freqs[2u * u + 1u]);
    let v = x4[i];
    x4[i] = vec4<f32>(v.x * cs0.x - v.y * cs0.y, v.x * cs0.y + v.y * cs0.x,
                      v.z * cs1.x - v.w * cs1.y, v.z * cs1.y + v.w * cs1.x);
  }
}

@compute @workgroup_size(WG)
fn main_scalar(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
               @builtin(local_invocation_index) lid: u32) {
  let half = p.rope_dim / 2u;
  let g = invocation(wg, nwg, lid);
  if (g >= p.tokens * p.heads * half) { return; }
  let row = g / half;
  let j = g - row * half;
  let base = row * p.head_dim;
  var i0 = base + 2u * j;
  var i1 = i0 + 1u;
  if (NEOX) {
    i0 = base + j;
    i1 = i0 + half;
  }
  let cs = cos_sin(f32(positions[row / p.heads]) * freqs[j]);
  let a = x1[i0];
  let b = x1[i1];
  x1[i0] = a * cs.x - b * cs.y;
  x1[i1] = a * cs.y + b * cs.x;
}

struct KvParams {
  tokens: u32,
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  rope_dim: u32,
}

@group(0) @binding(0) var<uniform> kp: KvParams;

@compute @workgroup_size(WG)
fn rope_kv(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
           @builtin(local_invocation_index) lid: u32) {
  let pairs = kp.head_dim / 2u;
  let heads = kp.heads + 2u * kp.kv_heads;
  let g = invocation(wg, nwg, lid);
  if (g >= kp.tokens * heads * pairs) { return; }
  let th = g / pairs;              // token * heads + head: row th of qkv viewed as [*, head_dim]
  let j = g - th * pairs;
  let h = th % heads;
  let t = th / heads;
  // pair j: rotated pairs below rope_dim / 2 by mode; the rest are (2j, 2j + 1), passed through
  let half = kp.rope_dim / 2u;
  var i0 = 2u * j;
  var i1 = i0 + 1u;
  if (NEOX && j < half) {
    i0 = j;
    i1 = j + half;
  }
  let src = th * kp.head_dim;
  var a = qkv[src + i0];
  var b = qkv[src + i1];
  if (h < kp.heads + kp.kv_heads && j < half) {
    let cs = cos_sin(f32(positions[t]) * freqs[j]);
    let a0 = a;
    a = a0 * cs.x - b * cs.y;
    b = a0 * cs.y + b * cs.x;
  }
  if (h < kp.heads) {
    let dst = (t * kp.heads + h) * kp.head_dim;
    q_out[dst + i0] = a;
    q_out[dst + i1] = b;
    return;
  }
  let is_k = h < kp.heads + kp.kv_heads;
  if (KEEP_K && is_k) {
    qkv[src + i0] = a;
    qkv[src + i1] = b;
  }
  if (!WRITE_KV) { return; }
  let kvh = select(h - kp.heads - kp.kv_heads, h - kp.heads, is_k);
  let slot = slot_mapping[t * kp.kv_heads + kvh];
  if (slot == 0xffffffffu) { return; }
  let dst = slot * kp.head_dim;
  if (is_k) {
    k_pool[dst + i0] = a;
    k_pool[dst + i1] = b;
  } else {
    v_pool[dst + i0] = a;
    v_pool[dst + i1] = b;
  }
}
