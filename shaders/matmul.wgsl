// Matrix multiplication against a weight matrix: Y[M, N] = X[M, K] . W[N, K]^T, with X and Y f32
// and W in any weight format (common/weights.wgsl; WFMT picks it). Two entry points:
//
// tiled  (prefill and batches over 8 rows): a workgroup computes a TM x TN tile of Y. Per step
//        over K it stages a TM x 32 tile of X and a TN x 32 tile of W, dequantised to f32, in
//        workgroup memory (32 = one quantisation block, so each W row of the tile is exactly one
//        block), then each of its (TM/4)*(TN/4) threads accumulates a 4 x 4 register micro-tile
//        from vec4 reads. Tile rows are padded to 9 vec4s so the vec4 reads of neighbouring
//        threads hit distinct banks. A thread's micro-tile rows/columns are strided by TM/4 and
//        TN/4, so neighbouring threads write neighbouring elements of Y. TM is chosen by M (16, 32
//        or 64): a batch of up to 64 rows is one row of tiles, so every weight is read once, and
//        a narrow tile wastes no arithmetic on padding rows.
// decode (small M, 1..8): a workgroup computes MV_ROWS outputs (W rows) for all MV_M rows of X,
//        so each weight is read from memory once. Its MV_WG threads split K in groups of 8
//        elements (neighbouring threads read neighbouring weight bytes); each thread keeps an
//        MV_M x MV_ROWS block of partial sums in registers and reuses every X value it loads for
//        MV_ROWS weight rows; the partial sums are reduced through workgroup memory (a tree).
//        Rows row0 .. row0 + MV_M - 1 of X and Y are processed, so larger M can be covered by
//        several dispatches.
//
// Fusions, chosen by uniforms (branches that are uniform over the dispatch, so one pipeline per
// shape serves them all: no extra shader compiles), none of which changes the order of any dot
// product's additions:
// norm (prologue): X is RMS-normalised on the way in, x[m, k] * rs[m] * g[k] with the row scales
//        rs from rmsnorm.wgsl's `scale` entry point and the norm weight g: the same f32 products,
//        in the same order, that rmsnorm.wgsl's `main` writes out.
// epi (epilogue): 1 adds a bias row, y = acc + aux[n] (Qwen2's q/k/v biases); 2 adds the
//        residual, y = aux[m, n] + acc; 3 is SwiGLU over W = [gate; up] (2N rows: gate rows
//        0..N-1, up rows N..2N-1), y[m, n] = silu(gate) * up: a workgroup's weight rows are half
//        gate rows and the matching up rows, so both dot products of an output meet in one thread.
//#include weights
//#include activation

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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
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

// Writes Y[m, n] from its dot product acc through the bias or residual epilogue.
fn y_store(m: u32, n: u32, acc: f32) {
  let i = m * p.n + n;
  if (p.epi == EPI_BIAS) {
    y[i] = acc + aux[n];
  } else if (p.epi == EPI_RESIDUAL) {
    y[i] = aux[i] + acc;
  } else {
    y[i] = acc;
  }
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
// tiled

override TM: u32 = 64u;        // Y rows per workgroup (multiple of 4)
override TN: u32 = 64u;        // Y columns (W rows) per workgroup (multiple of 4)
override TT: u32 = (TM / 4u) * (TN / 4u);   // threads; do not set
const TK: u32 = 32u;           // K per step: one quantisation block
const KQ: u32 = TK / 4u;       // vec4s per tile row
const TS: u32 = KQ + 1u;       // padded tile row stride, in vec4s

var<workgroup> xs: array<vec4f, TM * TS>;
var<workgroup> ws: array<vec4f, TN * TS>;

@compute @workgroup_size(TT)
fn tiled(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let tx = lid % (TN / 4u);
  let ty = lid / (TN / 4u);
  // first output column of the tile (SwiGLU: TN/2 outputs, TN/2 gate rows then TN/2 up rows)
  let n0 = wg.x * select(TN, TN / 2u, p.epi == EPI_GLU);
  let m0 = wg.y * TM;
  let rb = w_row_bytes(p.k);
  var acc = array<vec4f, 4>();   // acc[i][j]: Y[m0 + ty + i*TM/4, tile column tx + j*TN/4]
  for (var k0 = 0u; k0 < p.k; k0 += TK) {
    for (var q = lid; q < TM * KQ; q += TT) {
      let r = q / KQ;
      let kk = k0 + (q % KQ) * 4u;
      let m = m0 + r;
      var v = vec4f(0.0);
      if (m < p.m) {
        let b = m * p.k + kk;
        if (kk + 4u <= p.k) {
          v = vec4f(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
        } else {
          for (var e = 0u; e < 4u; e++) {
            if (kk + e < p.k) { v[e] = x[b + e]; }
          }
        }
        if (p.norm != 0u) { v = v * rs[m] * g_load4(kk); }
      }
      xs[r * TS + q % KQ] = v;
    }
    for (var q = lid; q < TN * 4u; q += TT) {
      let r = q / 4u;
      let gi = q % 4u;
      var v = W8(vec4f(0.0), vec4f(0.0));
      var live = n0 + r < p.n;
      if (p.epi == EPI_GLU) { live = n0 + r % (TN / 2u) < p.n; }
      if (live) { v = w_load8(w_row(n0, r, TN) * rb, k0 + gi * 8u, p.k); }
      ws[r * TS + gi * 2u] = v.lo;
      ws[r * TS + gi * 2u + 1u] = v.hi;
    }
    workgroupBarrier();
    for (var c = 0u; c < KQ; c++) {
      var b: array<vec4f, 4>;
      for (var j = 0u; j < 4u; j++) { b[j] = ws[(tx + j * (TN / 4u)) * TS + c]; }
      for (var i = 0u; i < 4u; i++) {
        let a = xs[(ty + i * (TM / 4u)) * TS + c];
        acc[i] += vec4f(dot(a, b[0]), dot(a, b[1]), dot(a, b[2]), dot(a, b[3]));
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + ty + i * (TM / 4u);
    if (m < p.m) {
      if (p.epi == EPI_GLU) {
        // columns j = 0, 1 are gate rows, j + 2 the up rows of the same outputs
        for (var j = 0u; j < 2u; j++) {
          let n = n0 + tx + j * (TN / 4u);
          if (n < p.n) { y[m * p.n + n] = silu1(acc[i][j]) * acc[i][j + 2u]; }
        }
      } else {
        for (var j = 0u; j < 4u; j++) {
          let n = n0 + tx + j * (TN / 4u);
          if (n < p.n) { y_store(m, n, acc[i][j]); }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// decode

const MV_MAX: u32 = 8u;
override MV_M: u32 = 1u;       // rows of X per dispatch, 1..8
override MV_ROWS: u32 = 4u;    // W rows per workgroup, 1..8
override MV_WG: u32 = 128u;    // threads splitting K; a power of two

var<workgroup> red: array<f32, MV_WG * MV_M * MV_ROWS>;

@compute @workgroup_size(MV_WG)
fn decode(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_index) lid: u32) {
  // outputs per workgroup: MV_ROWS, or for SwiGLU MV_ROWS/2 (gate rows, then their up rows)
  let outs = select(MV_ROWS, MV_ROWS / 2u, p.epi == EPI_GLU);
  let n0 = (wg.x + wg.y * nwg.x) * outs;
  if (n0 >= p.n) { return; }
  let rb = w_row_bytes(p.k);
  var acc: array<array<f32, MV_MAX>, MV_MAX>;   // acc[m][r]
  let groups = (p.k + 7u) / 8u;
  for (var gi = lid; gi < groups; gi += MV_WG) {
    let col = gi * 8u;
    var xv: array<W8, MV_MAX>;
    for (var m = 0u; m < MV_M; m++) { xv[m] = x_load8(p.row0 + m, col); }
    if (p.norm != 0u) {
      let g8 = W8(g_load4(col), g_load4(col + 4u));
      for (var m = 0u; m < MV_M; m++) {
        let s = rs[p.row0 + m];
        xv[m] = W8(xv[m].lo * s * g8.lo, xv[m].hi * s * g8.hi);
      }
    }
    for (var r = 0u; r < MV_ROWS; r++) {
      let wv = w_load8(w_row(n0, r, MV_ROWS) * rb, col, p.k);
      for (var m = 0u; m < MV_M; m++) {
        acc[m][r] += dot(xv[m].lo, wv.lo) + dot(xv[m].hi, wv.hi);
      }
    }
  }
  for (var m = 0u; m < MV_M; m++) {
    for (var r = 0u; r < MV_ROWS; r++) { red[(m * MV_ROWS + r) * MV_WG + lid] = acc[m][r]; }
  }
  workgroupBarrier();
  for (var s = MV_WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      for (var v = 0u; v < MV_M * MV_ROWS; v++) { red[v * MV_WG + lid] += red[v * MV_WG + lid + s]; }
    }
    workgroupBarrier();
  }
  for (var v = lid; v < MV_M * outs; v += MV_WG) {
    let m = v / outs;
    let r = v % outs;
    let n = n0 + r;
    if (n < p.n) {
      let a = red[(m * MV_ROWS + r) * MV_WG];
      if (p.epi == EPI_GLU) {
        y[(p.row0 + m) * p.n + n] = silu1(a) * red[(m * MV_ROWS + r + outs) * MV_WG];
      } else {
        y_store(p.row0 + m, n, a);
      }
    }
  }
}
