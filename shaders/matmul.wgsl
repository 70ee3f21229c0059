// Matrix multiplication against a weight matrix: Y[M, N] = X[M, K] . W[N, K]^T, with X and Y f32
// and W in any weight format (common/weights.wgsl; WFMT picks it). Two entry points:
//
// tiled  (prefill, large M): a workgroup computes a TM x TN tile of Y. Per step over K it stages a
//        TM x 32 tile of X and a TN x 32 tile of W, dequantised to f32, in workgroup memory
//        (32 = one quantisation block, so each W row of the tile is exactly one block), then each
//        of its (TM/4)*(TN/4) threads accumulates a 4 x 4 register micro-tile from vec4 reads.
//        Tile rows are padded to 9 vec4s so the vec4 reads of neighbouring threads hit distinct
//        banks. A thread's micro-tile rows/columns are strided by TM/4 and TN/4, so neighbouring
//        threads write neighbouring elements of Y.
// decode (small M, 1..8): a workgroup computes MV_ROWS outputs (W rows) for all MV_M rows of X,
//        so each weight is read from memory once. Its MV_WG threads split K in groups of 8
//        elements (neighbouring threads read neighbouring weight bytes); each thread keeps an
//        MV_M x MV_ROWS block of partial sums in registers and reuses every X value it loads for
//        MV_ROWS weight rows; the partial sums are reduced through workgroup memory (a tree).
//        Rows row0 .. row0 + MV_M - 1 of X and Y are processed, so larger M can be covered by
//        several dispatches.
//#include weights

override WFMT: u32 = 0u;

struct Params {
  m: u32,
  n: u32,
  k: u32,
  row0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

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
  let n0 = wg.x * TN;
  let m0 = wg.y * TM;
  let rb = w_row_bytes(p.k);
  var acc = array<vec4f, 4>();   // acc[i][j]: Y[m0 + ty + i*TM/4, n0 + tx + j*TN/4]
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
      }
      xs[r * TS + q % KQ] = v;
    }
    for (var q = lid; q < TN * 4u; q += TT) {
      let r = q / 4u;
      let g = q % 4u;
      let n = n0 + r;
      var v = W8(vec4f(0.0), vec4f(0.0));
      if (n < p.n) { v = w_load8(n * rb, k0 + g * 8u, p.k); }
      ws[r * TS + g * 2u] = v.lo;
      ws[r * TS + g * 2u + 1u] = v.hi;
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
      for (var j = 0u; j < 4u; j++) {
        let n = n0 + tx + j * (TN / 4u);
        if (n < p.n) { y[m * p.n + n] = acc[i][j]; }
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
  let n0 = (wg.x + wg.y * nwg.x) * MV_ROWS;
  if (n0 >= p.n) { return; }
  let rb = w_row_bytes(p.k);
  var acc: array<array<f32, MV_MAX>, MV_MAX>;   // acc[m][r]
  let groups = (p.k + 7u) / 8u;
  for (var g = lid; g < groups; g += MV_WG) {
    let col = g * 8u;
    var xv: array<W8, MV_MAX>;
    for (var m = 0u; m < MV_M; m++) { xv[m] = x_load8(p.row0 + m, col); }
    for (var r = 0u; r < MV_ROWS; r++) {
      let wv = w_load8(min(n0 + r, p.n - 1u) * rb, col, p.k);
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
  for (var v = lid; v < MV_M * MV_ROWS; v += MV_WG) {
    let n = n0 + v % MV_ROWS;
    if (n < p.n) { y[(p.row0 + v / MV_ROWS) * p.n + n] = red[v * MV_WG]; }
  }
}
