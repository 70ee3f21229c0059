// Buffer copy: dst[0, bytes) = src[0, bytes). The kernel benchmark times it as the device's own
// copy bandwidth, the roofline other kernels are compared to, so it is built to saturate memory:
//   copy:      16-byte (vec4<u32>) loads and stores over the first n4 vec4s. A workgroup moves
//              tiles of WG * 4 vec4s; invocation `lid` handles vec4s lid, lid + WG, lid + 2 WG,
//              lid + 3 WG of a tile (each load instruction coalesced across the workgroup), issuing
//              all four loads before any store so four requests per invocation are in flight.
//              Workgroups stride over the tiles (grid-stride loop), so the dispatch can be capped
//              near what the device keeps resident; only the last, partial tile checks bounds.
//   copy_tail: the last `tail` (0-15) bytes, one u32 word per invocation; a final partial word
//              keeps dst's bytes beyond `bytes`.
// Both views of the same bindings (vec4 and u32) are declared at one binding for the two entry
// points. src and dst must not overlap.

override WG: u32 = 256;
const UNROLL: u32 = 4u;

struct Params {
  n4: u32,    // whole vec4s
  tail: u32,  // bytes after the n4 vec4s, 0..15
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src4: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> src1: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst1: array<u32>;

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let tile = WG * UNROLL;
  let full = p.n4 / tile;
  let tiles = full + select(0u, 1u, p.n4 % tile != 0u);
  let stride = nwg.x * nwg.y;
  for (var t = wg.x + wg.y * nwg.x; t < tiles; t += stride) {
    let i = t * tile + lid;
    if (t < full) {
      let a = src4[i];
      let b = src4[i + WG];
      let c = src4[i + 2u * WG];
      let d = src4[i + 3u * WG];
      dst4[i] = a;
      dst4[i + WG] = b;
      dst4[i + 2u * WG] = c;
      dst4[i + 3u * WG] = d;
    } else {
      for (var k = 0u; k < UNROLL; k++) {
        let j = i + k * WG;
        if (j < p.n4) { dst4[j] = src4[j]; }
      }
    }
  }
}

@compute @workgroup_size(4)
fn copy_tail(@builtin(local_invocation_index) lid: u32) {
  let w = p.n4 * 4u + lid;
  let first = lid * 4u;  // first tail byte of this word
  if (first >= p.tail) { return; }
  let n = p.tail - first;
  if (n >= 4u) {
    dst1[w] = src1[w];
  } else {
    // little-endian: the word's first n bytes are its low 8n bits
    let mask = (1u << (8u * n)) - 1u;
    dst1[w] = (dst1[w] & ~mask) | (src1[w] & mask);
  }
}
