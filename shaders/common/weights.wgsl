// Weight decoding for the GGUF layouts, shared by every shader that reads model weights.
//
// The including shader declares
//   override WFMT: u32;                     // 0 = f32, 1 = f16, 2 = q8_0, 3 = q4_0, 4 = bf16
//   @group(0) @binding(..) var<storage, read> w: array<u32>;   // the GGUF bytes, unchanged
// and reads weights in groups of 8 consecutive elements of a row with w_load8(). WFMT is an
// override constant, so each pipeline keeps one decoder and the format branches fold away.
//
// Layouts (little-endian): f32 4 bytes; f16 2 bytes; bf16 2 bytes (the upper half of an f32); q8_0
// blocks of 32 elements in 34 bytes (f16 d, 32 x i8 q; x = d*q); q4_0 blocks of 32 elements in 18
// bytes (f16 d, 16 bytes qs; element j < 16 is ((qs[j] & 15) - 8) * d, element j + 16 is
// ((qs[j] >> 4) - 8) * d). A row of K elements is w_row_bytes(K) bytes; quantised rows are whole
// blocks (K % 32 == 0, checked on the CPU side).
// Blocks of 34 and 18 bytes are only 2-byte aligned, so bytes are taken from u32 words by shifting;
// so are f16/bf16 rows of odd K (every other row starts in the upper half of a u32).
// f16 is decoded with unpack2x16float: no kernel needs the shader-f16 feature. bf16 is decoded by
// moving its 16 bits to the top of a u32 and bitcasting: exact, every pattern (no arithmetic, so
// subnormals, +-0, infinities and NaN bits pass through as they are).
// Dequantised values are f32(d) * f32(q), exact in f32 (11-bit times <= 8-bit significands).
// Byte offsets are u32: one weight binding holds at most 4 GiB.

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

// Bytes of one row of k elements.
fn w_row_bytes(k: u32) -> u32 {
  if (WFMT == WFMT_F32) { return k * 4u; }
  if (WFMT == WFMT_F16 || WFMT == WFMT_BF16) { return k * 2u; }
  if (WFMT == WFMT_Q8_0) { return (k / 32u) * 34u; }
  return (k / 32u) * 18u;
}

// The u32 made of the 4 bytes at a 2-aligned byte offset.
fn w_u32_at2(b: u32) -> u32 {
  let i = b >> 2u;
  let lo = w[i];
  return select(lo, (lo >> 16u) | (w[i + 1u] << 16u), (b & 2u) != 0u);
}

// The 8 bytes at a 2-aligned byte offset, as two u32 (three word reads when unaligned).
fn w_u32x2_at2(b: u32) -> vec2u {
  let i = b >> 2u;
  let a = w[i];
  let c = w[i + 1u];
  if ((b & 2u) == 0u) { return vec2u(a, c); }
  let e = w[i + 2u];
  return vec2u((a >> 16u) | (c << 16u), (c >> 16u) | (e << 16u));
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

// The nibbles at bit `s` (0 or 4) of four bytes, minus 8, as f32.
fn w_u4x4(v: u32, s: u32) -> vec4f {
  let q = (vec4u(v) >> (vec4u(0u, 8u, 16u, 24u) + vec4u(s))) & vec4u(15u);
  return vec4f(vec4i(q) - vec4i(8));
}

// One element of an f32, f16 or bf16 row starting at byte row_byte (ragged row ends; quantised rows
// are whole blocks and always read through w_load8).
fn w_load1(row_byte: u32, col: u32) -> f32 {
  if (WFMT == WFMT_F32) { return bitcast<f32>(w[(row_byte >> 2u) + col]); }
  if (WFMT == WFMT_BF16) { return w_bf16_at(row_byte + col * 2u); }
  return w_half_at(row_byte + col * 2u);
}

// Elements col..col+7 of a row of k elements that starts at byte row_byte; col % 8 == 0.
// Elements at or past k read as 0 (only f32/f16/bf16 rows can end inside a group).
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
  } else if (WFMT == WFMT_Q8_0) {
    let blk = row_byte + (col / 32u) * 34u;
    let d = w_half_at(blk);
    let q = w_u32x2_at2(blk + 2u + col % 32u);
    return W8(w_i8x4(q.x) * d, w_i8x4(q.y) * d);
  } else {
    let blk = row_byte + (col / 32u) * 18u;
    let d = w_half_at(blk);
    let j = col % 32u;
    // Elements j..j+7 sit in bytes (j % 16).. of qs, low nibbles below 16, high nibbles above.
    let q = w_u32x2_at2(blk + 2u + (j % 16u));
    let s = select(0u, 4u, j >= 16u);
    return W8(w_u4x4(q.x, s) * d, w_u4x4(q.y, s) * d);
  }
  // Ragged f32/f16/bf16 row end.
  var r = array<f32, 8>();
  for (var e = 0u; e < 8u; e++) {
    if (col + e < k) { r[e] = w_load1(row_byte, col + e); }
  }
  return W8(vec4f(r[0], r[1], r[2], r[3]), vec4f(r[4], r[5], r[6], r[7]));
}
