// Key index (src/ann/): appends new keys [first, first + n) of a head row to the lists of the
// centroids that score them at least their list's threshold (the build's L-th best score), one
// invocation per key. A list past its capacity sends the key to the overflow list instead (once
// per key; the caller sizes the overflow list for every key appended since the build).
//#include paged_kv

override HEAD_DIM: u32 = 128;
override BLOCK_SIZE: u32 = 16;
override KV_F16: bool = false;
override D4: u32 = HEAD_DIM / 4u;
const WG: u32 = 64u;

struct Params {
  table_stride: u32,
  row: u32,
  first: u32,
  n: u32,
  clusters: u32,
  cap: u32,
  over_cap: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cent: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_pool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> block_table: array<u32>;
@group(0) @binding(4) var<storage, read> thr: array<f32>;
@group(0) @binding(5) var<storage, read_write> lists: array<i32>;
@group(0) @binding(6) var<storage, read_write> counts: array<atomic<u32>>;
// Declared for paged_kv.wgsl's load_v; never bound.
@group(0) @binding(15) var<storage, read> v_pool: array<vec4<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * WG + lid;
  if (i >= p.n) { return; }
  let id = p.first + i;
  let slot = slot_of(p.row, id);
  var overflow = false;
  for (var j = 0u; j < p.clusters; j++) {
    var s = 0.0;
    for (var c = 0u; c < D4; c++) { s += dot(cent[j * D4 + c], load_k(slot, c)); }
    if (s >= thr[j]) {
      let t = atomicAdd(&counts[j], 1u);
      if (t < p.cap) {
        lists[j * p.cap + t] = i32(id);
      } else {
        overflow = true;
      }
    }
  }
  if (overflow) {
    let t = atomicAdd(&counts[p.clusters], 1u);
    if (t < p.over_cap) { lists[p.clusters * p.cap + t] = i32(id); }
  }
}
