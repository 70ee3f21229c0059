// What the matmul kernels share (docs: matmul.wgsl): parameters and bindings, X / norm-weight loads,
// the epilogue, and the decode kernel's dot products and stores (its reductions differ between
// matmul.wgsl and matmul_subgroup.wgsl). The including shader includes weights and activation.

override WFMT: u32 = 0u;

const EPI_NONE: u32 = 0u;
const EPI_BIAS: u32 = 1u;
const EPI_RESIDUAL: u32 = 2u;
const EPI_GLU: u32 = 3u;

struct Params {
  m: u32,
  n: u32,        // outputs per row of Y (for SwiGLU, half of W's rows)
  k: u32,
  row0: u32,
  epi: u32,      // EPI_*
  norm: u32,     // 1: normalise X's rows (prologue)
  kchunk: u32,   // tiled, split over K: elements of K per split (a multiple of 32); else K
  splits: u32,   // split_sum: partial sums per output
  eps: f32,      // split_sum_rows: the RMS scales' epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4u>;   // as uploaded (common/weights.wgsl)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> aux: array<f32>;   // bias [N] or residual [M, N]
@group(0) @binding(5) var<storage, read> g: array<f32>;     // norm weight [K]
@group(0) @binding(6) var<storage, read> rs: array<f32>;    // norm row scales [M]

// Elements col..col+7 of row `row` of X (zeros past K).
fn x_load8(row: u32, col: u32) -> W8 {
  let b = row * p.k + col;
  if (col + 8u <= p.k) {
    return W8(vec4f(x[b], x[b + 1u], x[b + 2u], x[b + 3u]), vec4f(x[b + 4u], x[b + 5u], x[b + 6u], x[b + 7u]));
  }
  var r = array<f32, 8>();
  for (var e = 0u; e < 8u; e++) {
    if (col + e < p.k) { r[e] = x[b + e]; }
  }
  return W8(vec4f(r[0], r[1], r[2], r[3]), vec4f(r[4], r[5], r[6], r[7]));
}

// Four elements of the norm weight from col (zeros past K).
fn g_load4(col: u32) -> vec4f {
  if (col + 4u <= p.k) { return vec4f(g[col], g[col + 1u], g[col + 2u], g[col + 3u]); }
  var r = vec4f(0.0);
  for (var e = 0u; e < 4u; e++) {
    if (col + e < p.k) { r[e] = g[col + e]; }
  }
  return r;
}

// Y[m, n] from its dot product acc through the bias or residual epilogue.
fn y_value(m: u32, n: u32, acc: f32) -> f32 {
  if (p.epi == EPI_BIAS) { return acc + aux[n]; }
  if (p.epi == EPI_RESIDUAL) { return aux[m * p.n + n] + acc; }
  return acc;
}

fn y_store(m: u32, n: u32, acc: f32) {
  y[m * p.n + n] = y_value(m, n, acc);
}

// W row of slot r of a block of `width` weight rows whose first output is n0 (clamped to a valid
// row; SwiGLU: the first half of the block are gate rows, the second half the matching up rows).
fn w_row(n0: u32, r: u32, width: u32) -> u32 {
  if (p.epi == EPI_GLU) {
    let half = width / 2u;
    let o = min(n0 + r % half, p.n - 1u);
    return select(o, o + p.n, r >= half);
  }
  return min(n0 + r, p.n - 1u);
}

// ---------------------------------------------------------------------------------------------
// decode: dot products and stores

const MV_MAX: u32 = 8u;
override MV_M: u32 = 1u;       // rows of X per dispatch, 1..8
override MV_ROWS: u32 = 4u;    // W rows per workgroup, 1..8
override MV_WG: u32 = 128u;    // threads splitting K; a power of two

// Outputs per decode workgroup: MV_ROWS, or for SwiGLU MV_ROWS/2 (gate rows, then their up rows).
fn decode_outputs() -> u32 {
  return select(MV_ROWS, MV_ROWS / 2u, p.epi == EPI_GLU);
}

// Elements col..col+7 of X rows row0 .. row0 + MV_M - 1, RMS-normalised when the norm prologue is on.
fn x_rows8(col: u32) -> array<W8, MV_MAX> {
  var xv = array<W8, MV_MAX>();
  for (var m = 0u; m < MV_M; m++) { xv[m] = x_load8(p.row0 + m, col); }
  if (p.norm != 0u) {
    let g8 = W8(g_load4(col), g_load4(col + 4u));
    for (var m = 0u; m < MV_M; m++) {
      let s = rs[p.row0 + m];
      xv[m] = W8(xv[m].lo * s * g8.lo, xv[m].hi * s * g8.hi);
    }
  }
  return xv;
}

// This thread's partial dot products acc[m][r] of X rows row0 + m with W rows w_row(n0, r): the K
// groups of w_group() elements lid, lid + MV_WG, ... (f32 / f16 / bf16: 8 elements, one or two
// 16-byte loads per W row; q8_0 / q4_0: a block, its scales one and its quants one or two 16-byte
// loads per W row; every X value loaded once for all MV_ROWS rows).
fn decode_acc(n0: u32, lid: u32) -> array<array<f32, MV_MAX>, MV_MAX> {
  var acc = array<array<f32, MV_MAX>, MV_MAX>();
  if (w_quantized()) {
    let nb = p.k / 32u;
    for (var b = lid; b < nb; b += MV_WG) {
      var wb = array<WB, MV_MAX>();
      for (var r = 0u; r < MV_ROWS; r++) { wb[r] = w_block(w_row(n0, r, MV_ROWS) * nb + b); }
      for (var s = 0u; s < 4u; s++) {
        let xv = x_rows8(b * 32u + s * 8u);
        for (var r = 0u; r < MV_ROWS; r++) {
          let wv = w_block8(wb[r], s);
          for (var m = 0u; m < MV_M; m++) {
            acc[m][r] += dot(xv[m].lo, wv.lo) + dot(xv[m].hi, wv.hi);
          }
        }
      }
    }
    return acc;
  }
  let rv = w_row_vec4s(p.k);
  let groups = (p.k + 7u) / 8u;
  for (var gi = lid; gi < groups; gi += MV_WG) {
    let col = gi * 8u;
    let xv = x_rows8(col);
    for (var r = 0u; r < MV_ROWS; r++) {
      let wv = w_load8(w_row(n0, r, MV_ROWS) * rv, col);
      for (var m = 0u; m < MV_M; m++) {
        acc[m][r] += dot(xv[m].lo, wv.lo) + dot(xv[m].hi, wv.hi);
      }
    }
  }
  return acc;
}

// Stores output r (< decode_outputs()) of X row row0 + m from its reduced dot product `a` (SwiGLU:
// the gate's) and, for SwiGLU, the matching up row's `up`.
fn decode_store(n0: u32, m: u32, r: u32, a: f32, up: f32) {
  let n = n0 + r;
  if (n >= p.n) { return; }
  if (p.epi == EPI_GLU) {
    y[(p.row0 + m) * p.n + n] = silu1(a) * up;
  } else {
    y_store(p.row0 + m, n, a);
  }
}
