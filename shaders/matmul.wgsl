// Matrix multiplication against a weight matrix: Y[M, N] = X[M, K] . W[N, K]^T, with X and Y f32
// and W in any weight format (common/weights.wgsl; WFMT picks it). Entry points:
//
// tiled  (prefill and batches over 8 rows): a workgroup computes a TM x TN tile of Y. Per step
//        over K it stages a TM x 32 tile of X and a TN x 32 tile of W, dequantised to f32, in
//        workgroup memory (32 = one quantisation block, so each W row of the tile is exactly one
//        block), then each of its (TM/4)*(TN/4) threads accumulates a 4 x 4 register micro-tile
//        from vec4 reads. Tile rows are padded to 9 vec4s so the vec4 reads of neighbouring
//        threads hit distinct banks. A thread's micro-tile rows/columns are strided by TM/4 and
//        TN/4, so neighbouring threads write neighbouring elements of Y. W tiles are staged from
//        16-byte loads: 8 elements per thread for f32 / f16 / bf16, a block per thread for q8_0 /
//        q4_0. TM is chosen by M (16, 32 or 64): a batch of up to 64 rows is one row of tiles, so
//        every weight is read once, and a narrow tile wastes no arithmetic on padding rows.
//        Split over K (grid z, p.kchunk elements of K each; small batches whose row of tiles is
//        too narrow to fill a GPU): each split writes its raw sums as rows z * M + m of a partial
//        buffer, and `split_sum` adds the splits in order and applies the epilogue (SwiGLU's W is
//        then a plain [2N, K] matrix: partial columns 0..N-1 the gate sums, N..2N-1 the up sums).
//        Each weight is still read once. `split_sum_rows` does the same a workgroup per row and
//        also writes each row's RMS scale for the next matmul's norm prologue (as rmsnorm.wgsl's
//        `scale` computes it, the same reduction), so the split costs no extra dispatch where a
//        norm follows (the o and down projections).
// decode (small M, 1..8): a workgroup computes MV_ROWS outputs (W rows) for all MV_M rows of X,
//        so each weight is read from memory once. Its MV_WG threads split K in groups of 8
//        elements, or of one block for q8_0 / q4_0 (neighbouring threads read neighbouring weight
//        bytes); each thread keeps an MV_M x MV_ROWS block of partial sums in registers and
//        reuses every X value it loads for MV_ROWS weight rows; the partial sums are reduced
//        through workgroup memory (a tree), or, in matmul_subgroup.wgsl (devices with
//        `subgroups`), by subgroupAdd and one exchange of the subgroups' sums through workgroup
//        memory.
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
//#include matmul_io
//#include reduce

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
  let rv = w_row_vec4s(p.k);
  let k_end = min(p.k, (wg.z + 1u) * p.kchunk);
  var acc = array<vec4f, 4>();   // acc[i][j]: Y[m0 + ty + i*TM/4, tile column tx + j*TN/4]
  for (var k0 = wg.z * p.kchunk; k0 < k_end; k0 += TK) {
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
    // W: a load per tile row and group of w_group() elements (q8_0 / q4_0: the row's block)
    let wg_per_row = TK / w_group();
    for (var q = lid; q < TN * wg_per_row; q += TT) {
      let r = q / wg_per_row;
      let gi = q % wg_per_row;
      var live = n0 + r < p.n;
      if (p.epi == EPI_GLU) { live = n0 + r % (TN / 2u) < p.n; }
      if (w_quantized()) {
        var blk = WB(0.0, vec4u(0u), vec4u(0u));
        if (live) { blk = w_block(w_row(n0, r, TN) * (p.k / TK) + k0 / TK); }
        for (var s = 0u; s < 4u; s++) {
          let v = w_block8(blk, s);
          ws[r * TS + s * 2u] = v.lo;
          ws[r * TS + s * 2u + 1u] = v.hi;
        }
      } else {
        // a group wholly past K (the last step of a K that is not a multiple of 32) reads nothing:
        // the row padding covers only the group K falls in
        let col = k0 + gi * 8u;
        var v = W8(vec4f(0.0), vec4f(0.0));
        if (live && col < p.k) { v = w_load8(w_row(n0, r, TN) * rv, col); }
        ws[r * TS + gi * 2u] = v.lo;
        ws[r * TS + gi * 2u + 1u] = v.hi;
      }
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
          // split over K: this split's rows of the partial sums (no epilogue: split_sum applies it)
          if (n < p.n) { y_store(wg.z * p.m + m, n, acc[i][j]); }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// split_sum: Y[m, n] from the tiled kernel's partial sums over K (bound at x: p.splits blocks of
// [M, N], or of [M, 2N] for SwiGLU), added in split order, then the epilogue.

const SPLIT_WG: u32 = 256u;

@compute @workgroup_size(SPLIT_WG)
fn split_sum(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
             @builtin(local_invocation_index) lid: u32) {
  // the matmul bind group binds every buffer; this entry point reads none of these
  _ = &w;
  _ = &g;
  _ = &rs;
  let i = (wg.x + wg.y * nwg.x) * SPLIT_WG + lid;
  if (i >= p.m * p.n) { return; }
  let m = i / p.n;
  let n = i % p.n;
  let glu = p.epi == EPI_GLU;
  let cols = select(p.n, 2u * p.n, glu);
  var s = 0.0;
  var u = 0.0;
  for (var z = 0u; z < p.splits; z++) {
    let row = (z * p.m + m) * cols;
    s += x[row + n];
    if (glu) { u += x[row + p.n + n]; }
  }
  if (glu) {
    y[i] = silu1(s) * u;
  } else {
    y_store(m, n, s);
  }
}

// split_sum_rows: split_sum over whole rows (no SwiGLU), one workgroup per row, with each row's
// RMS scale 1 / sqrt(mean(y^2) + eps) into scales_out: the loop and reduction of rmsnorm.wgsl's
// `scale` over the values written, so the scales are its bits.

override WG: u32 = 256u;       // split_sum_rows threads (common/reduce.wgsl)
@group(0) @binding(6) var<storage, read_write> scales_out: array<f32>;

@compute @workgroup_size(WG)
fn split_sum_rows(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                  @builtin(local_invocation_index) lid: u32) {
  _ = &w;
  _ = &g;
  let m = wg.x + wg.y * nwg.x;
  if (m >= p.m) { return; }
  var ss = 0.0;
  for (var n = lid; n < p.n; n += WG) {
    var s = 0.0;
    for (var z = 0u; z < p.splits; z++) { s += x[(z * p.m + m) * p.n + n]; }
    let v = y_value(m, n, s);
    y[m * p.n + n] = v;
    ss += v * v;
  }
  let scale = inverseSqrt(wg_sum(ss, lid) / f32(p.n) + p.eps);
  if (lid == 0u) { scales_out[m] = scale; }
}

// ---------------------------------------------------------------------------------------------
// decode

var<workgroup> red: array<f32, MV_WG * MV_M * MV_ROWS>;

@compute @workgroup_size(MV_WG)
fn decode(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_index) lid: u32) {
  let outs = decode_outputs();
  let n0 = (wg.x + wg.y * nwg.x) * outs;
  if (n0 >= p.n) { return; }
  let acc = decode_acc(n0, lid);
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
    // the up row's sum is read only for SwiGLU (then r + outs < MV_ROWS)
    let up = select(0.0, red[(m * MV_ROWS + min(r + outs, MV_ROWS - 1u)) * MV_WG], p.epi == EPI_GLU);
    decode_store(n0, m, r, red[(m * MV_ROWS + r) * MV_WG], up);
  }
}
