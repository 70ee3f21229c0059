// Weight decoding, shared by every shader that reads model weights.
//
// The including shader declares
//   override WFMT: u32;                     // 0 = f32, 1 = f16, 2 = q8_0, 3 = q4_0, 4 = bf16
//   @group(0) @binding(..) var<storage, read> w: array<vec4u>;   // the weights as uploaded
// WFMT is an override constant, so each pipeline keeps one decoder and the format branches fold
// away. Every weight load is one 16-byte aligned vec4u (the layout is made at upload,
// kernels/weights.ts repackWeights). f32 / f16 / bf16 rows are read in groups of 8 consecutive
// elements with w_load8(); q8_0 / q4_0 tensors a block of 32 elements at a time with w_block() and
// w_block8() (w_group() says which).
//
// f32 / f16 / bf16 are the GGUF rows (little-endian; f32 4 bytes, f16 2, bf16 2: the upper half of
// an f32), each padded with zeros to a whole number of 8-element groups: w_row_vec4s(K) vec4u a row,
// so a group is one vec4u (f16 / bf16) or two (f32) and elements past K within it read as +0.
// q8_0 / q4_0 are repacked into superblocks of 8 blocks of 32 elements: the 8 f16 scales d (one
// vec4u), then the 8 blocks' quants: q8_0 32 int8 q in element order (x = d*q: two vec4u), q4_0 4
// u32 whose word t holds elements 8t..8t+7, element 8t+e in bits 4e..4e+3 (x = (q - 8) * d: one
// vec4u). Blocks are numbered through the tensor (row r's block c is r * K/32 + c; K % 32 == 0,
// checked on the CPU side).
// f16 is decoded with unpack2x16float: no kernel needs the shader-f16 feature. bf16 is decoded by
// moving its 16 bits to the top of a u32 and bitcasting: exact, every pattern (no arithmetic, so
// subnormals, +-0, infinities and NaN bits pass through as they are).
// Dequantised values are f32(d) * f32(q), exact in f32 (11-bit times <= 8-bit significands).
// Offsets are u32 counts of vec4u (64 GiB a binding).

const WFMT_F32: u32 = 0u;
const WFMT_F16: u32 = 1u;
const WFMT_Q8_0: u32 = 2u;
const WFMT_Q4_0: u32 = 3u;
const WFMT_BF16: u32 = 4u;

// Eight consecutive weights: elements 0..3 in lo, 4..7 in hi.
struct W8 {
  lo: vec4f,
  hi: vec4f,
}

// A quantised format (read by blocks).
fn w_quantized() -> bool {
  return WFMT == WFMT_Q8_0 || WFMT == WFMT_Q4_0;
}

// Elements a thread decodes per weight load: a block (32) for q8_0 / q4_0, else 8.
fn w_group() -> u32 {
  return select(8u, 32u, w_quantized());
}

// vec4u of one f32 / f16 / bf16 row of k elements as uploaded (k rounded up to whole groups of 8).
fn w_row_vec4s(k: u32) -> u32 {
  let groups = (k + 7u) / 8u;
  return select(groups, groups * 2u, WFMT == WFMT_F32);
}

// One loaded q8_0 / q4_0 block: its scale and quants (q1: q8_0's second 16 bytes).
struct WB {
  d: f32,
  q0: vec4u,
  q1: vec4u,
}

// Quantised block b of the tensor.
fn w_block(b: u32) -> WB {
  let qv = select(1u, 2u, WFMT == WFMT_Q8_0);   // quant vec4u per block
  let base = (b / 8u) * (1u + 8u * qv);          // superblock start: one vec4u of scales
  let j = b % 8u;
  let d = unpack2x16float(w[base][j / 2u])[j % 2u];
  let i = base + 1u + j * qv;
  var q1 = vec4u(0u);
  if (WFMT == WFMT_Q8_0) { q1 = w[i + 1u]; }
  return WB(d, w[i], q1);
}

// Elements 8s..8s+7 (s < 4) of a loaded block.
fn w_block8(v: WB, s: u32) -> W8 {
  if (WFMT == WFMT_Q8_0) {
    let q = select(v.q0, v.q1, s >= 2u);
    let h = (s % 2u) * 2u;
    return W8(w_i8x4(q[h]) * v.d, w_i8x4(q[h + 1u]) * v.d);
  }
  let u = v.q0[s];
  return W8(w_u4x4(u, 0u) * v.d, w_u4x4(u, 16u) * v.d);
}

// Eight bf16 packed two to a u32 (element 2i in the low half of u[i], 2i+1 in the high half).
fn w_bf16x8(u: vec4u) -> W8 {
  let e = u << vec4u(16u);            // even elements
  let o = u & vec4u(0xffff0000u);     // odd elements
  return W8(bitcast<vec4f>(vec4u(e.x, o.x, e.y, o.y)), bitcast<vec4f>(vec4u(e.z, o.z, e.w, o.w)));
}

// Four int8 (low byte first) as f32.
fn w_i8x4(v: u32) -> vec4f {
  return vec4f(bitcast<vec4i>(vec4u(v) << vec4u(24u, 16u, 8u, 0u)) >> vec4u(24u));
}

// The four nibbles from bit `s` (0 or 16) of v, minus 8, as f32.
fn w_u4x4(v: u32, s: u32) -> vec4f {
  let q = (vec4u(v) >> (vec4u(0u, 4u, 8u, 12u) + vec4u(s))) & vec4u(15u);
  return vec4f(vec4i(q) - vec4i(8));
}

// Elements col..col+7 (col % 8 == 0, col < K) of the f32 / f16 / bf16 row that starts at vec4u
// `row` (row index * w_row_vec4s(K)); elements past K are the row padding's zeros.
fn w_load8(row: u32, col: u32) -> W8 {
  if (WFMT == WFMT_F32) {
    let i = row + col / 4u;
    return W8(bitcast<vec4f>(w[i]), bitcast<vec4f>(w[i + 1u]));
  }
  let u = w[row + col / 8u];
  if (WFMT == WFMT_BF16) { return w_bf16x8(u); }
  return W8(vec4f(unpack2x16float(u.x), unpack2x16float(u.y)), vec4f(unpack2x16float(u.z), unpack2x16float(u.w)));
}
