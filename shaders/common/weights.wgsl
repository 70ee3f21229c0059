// Weight decoding, shared by every shader that reads model weights.
//
// The including shader declares
//   override WFMT: u32;                     // 0 = f32, 1 = f16, 2 = q8_0, 3 = q4_0, 4 = bf16
//   @group(0) @binding(..) var<storage, read> w: array<u32>;   // the weights as uploaded
// WFMT is an override constant, so each pipeline keeps one decoder and the format branches fold
// away. f32 / f16 / bf16 rows are read in groups of 8 consecutive elements with w_load8(); q8_0 /
// q4_0 tensors a block of 32 elements at a time with w_block() and w_block8() (w_group() says which).
//
// f32 / f16 / bf16 are the GGUF bytes unchanged (little-endian): f32 4 bytes; f16 2 bytes; bf16 2
// bytes (the upper half of an f32). A row of K elements is w_row_bytes(K) bytes. f16/bf16 rows of
// odd K start every other row in the upper half of a u32, so their bytes are taken from u32 words
// by shifting.
// q8_0 / q4_0 are repacked at upload (kernels/weights.ts repackWeights): blocks of 32 elements in
// superblocks of 8: the 8 f16 scales d (16 bytes), then the 8 blocks' quants, each 16-byte aligned:
// q8_0 32 int8 q in element order (x = d*q: two vec4<u32>), q4_0 4 u32 whose word t holds elements
// 8t..8t+7, element 8t+e in bits 4e..4e+3 (x = (q - 8) * d: one vec4<u32>). Blocks are numbered
// through the tensor (row r's block c is r * K/32 + c; K % 32 == 0, checked on the CPU side).
// f16 is decoded with unpack2x16float: no kernel needs the shader-f16 feature. bf16 is decoded by
// moving its 16 bits to the top of a u32 and bitcasting: exact, every pattern (no arithmetic, so
// subnormals, +-0, infinities and NaN bits pass through as they are).
// Dequantised values are f32(d) * f32(q), exact in f32 (11-bit times <= 8-bit significands).
// Offsets are u32: f32 / f16 / bf16 rows in bytes (4 GiB a binding), quantised blocks in words.

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

// Bytes of one f32 / f16 / bf16 row of k elements.
fn w_row_bytes(k: u32) -> u32 {
  if (WFMT == WFMT_F32) { return k * 4u; }
  return k * 2u;
}

// One loaded q8_0 / q4_0 block: its scale and quants (q1: q8_0's second 16 bytes).
struct WB {
  d: f32,
  q0: vec4u,
  q1: vec4u,
}

// The 16 bytes at word i (i % 4 == 0: 16-byte aligned).
fn w_vec4(i: u32) -> vec4u {
  return vec4u(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
}

// Quantised block b of the tensor.
fn w_block(b: u32) -> WB {
  let qw = select(4u, 8u, WFMT == WFMT_Q8_0);   // quant words per block
  let base = (b / 8u) * (4u + 8u * qw);          // superblock start: 4 words of scales
  let j = b % 8u;
  let d = unpack2x16float(w[base + j / 2u])[j % 2u];
  let i = base + 4u + j * qw;
  var q1 = vec4u(0u);
  if (WFMT == WFMT_Q8_0) { q1 = w_vec4(i + 4u); }
  return WB(d, w_vec4(i), q1);
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

// The u32 made of the 4 bytes at a 2-aligned byte offset.
fn w_u32_at2(b: u32) -> u32 {
  let i = b >> 2u;
  let lo = w[i];
  return select(lo, (lo >> 16u) | (w[i + 1u] << 16u), (b & 2u) != 0u);
}

// The 16 bytes at a 2-aligned byte offset, as four u32 (five word reads when unaligned).
fn w_u32x4_at2(b: u32) -> vec4u {
  let i = b >> 2u;
  let u = vec4u(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
  if ((b & 2u) == 0u) { return u; }
  let v = vec4u(w[i + 1u], w[i + 2u], w[i + 3u], w[i + 4u]);
  return (u >> vec4u(16u)) | (v << vec4u(16u));
}

// The bf16 at a 2-aligned byte offset, as f32: the low half of its word moved up, or the high half
// with the low half cleared.
fn w_bf16_at(b: u32) -> f32 {
  let word = w[b >> 2u];
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (b & 2u) != 0u));
}

// Eight bf16 packed two to a u32 (element 2i in the low half of u[i], 2i+1 in the high half).
fn w_bf16x8(u: vec4u) -> W8 {
  let e = u << vec4u(16u);            // even elements
  let o = u & vec4u(0xffff0000u);     // odd elements
  return W8(bitcast<vec4f>(vec4u(e.x, o.x, e.y, o.y)), bitcast<vec4f>(vec4u(e.z, o.z, e.w, o.w)));
}

// The f16 at a 2-aligned byte offset, as f32.
fn w_half_at(b: u32) -> f32 {
  let word = w[b >> 2u];
  return unpack2x16float(word >> ((b & 2u) * 8u)).x;
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

// One element of an f32, f16 or bf16 row starting at byte row_byte (ragged row ends).
fn w_load1(row_byte: u32, col: u32) -> f32 {
  if (WFMT == WFMT_F32) { return bitcast<f32>(w[(row_byte >> 2u) + col]); }
  if (WFMT == WFMT_BF16) { return w_bf16_at(row_byte + col * 2u); }
  return w_half_at(row_byte + col * 2u);
}

// Elements col..col+7 of an f32 / f16 / bf16 row of k elements that starts at byte row_byte;
// col % 8 == 0. Elements at or past k read as 0.
fn w_load8(row_byte: u32, col: u32, k: u32) -> W8 {
  if (WFMT == WFMT_F32) {
    if (col + 8u <= k) {
      let i = (row_byte >> 2u) + col;
      return W8(bitcast<vec4f>(vec4u(w[i], w[i + 1u], w[i + 2u], w[i + 3u])),
                bitcast<vec4f>(vec4u(w[i + 4u], w[i + 5u], w[i + 6u], w[i + 7u])));
    }
  } else if (WFMT == WFMT_F16 || WFMT == WFMT_BF16) {
    if (col + 8u <= k) {
      // 16 bytes at a 2-aligned offset (odd K puts odd rows at 2 mod 4).
      let u = w_u32x4_at2(row_byte + col * 2u);
      if (WFMT == WFMT_BF16) { return w_bf16x8(u); }
      return W8(vec4f(unpack2x16float(u.x), unpack2x16float(u.y)),
                vec4f(unpack2x16float(u.z), unpack2x16float(u.w)));
    }
  }
  // Ragged f32/f16/bf16 row end.
  var r = array<f32, 8>();
  for (var e = 0u; e < 8u; e++) {
    if (col + e < k) { r[e] = w_load1(row_byte, col + e); }
  }
  return W8(vec4f(r[0], r[1], r[2], r[3]), vec4f(r[4], r[5], r[6], r[7]));
}
