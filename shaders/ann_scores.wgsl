// Key index (src/ann/): scores of rows of A (queries or centroids, f32 [rows, HEAD_DIM]) against
// the keys of one head row in the paged KV layout (shaders/common/paged_kv.wgsl):
//   out[r * out_stride + i] = A[a_row0 + r] · K[first + i]   for r < rows, i < n.
// Workgroup (x, y) = a tile of WG keys (x + y * num_workgroups.x), z = a block of R rows of A held
// in workgroup memory, so each key row is read once per R rows.
//#include paged_kv

override HEAD_DIM: u32 = 128;
override BLOCK_SIZE: u32 = 16;
override KV_F16: bool = false;
override D4: u32 = HEAD_DIM / 4u;
override A_LEN: u32 = R * D4;
const WG: u32 = 64u;
const R: u32 = 4u;

struct Params {
  table_stride: u32,
  row: u32,        // head row whose keys are scored
  first: u32,      // first key scored
  n: u32,          // keys scored
  rows: u32,       // rows of A scored, from a_row0
  a_row0: u32,
  out_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_pool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> block_table: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// Declared for paged_kv.wgsl's load_v; never bound.
@group(0) @binding(15) var<storage, read> v_pool: array<vec4<u32>>;

var<workgroup> a_rows: array<vec4<f32>, A_LEN>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r0 = wg.z * R;
  for (var t = lid; t < A_LEN; t += WG) {
    let r = r0 + t / D4;
    a_rows[t] = select(vec4(0.0), a[(p.a_row0 + min(r, p.rows - 1u)) * D4 + t % D4], r < p.rows);
  }
  workgroupBarrier();
  let i = (wg.x + wg.y * nwg.x) * WG + lid;
  if (i >= p.n) { return; }
  let slot = slot_of(p.row, p.first + i);
  // the R = 4 rows' sums in one vector (a dynamically indexed array would live in memory)
  var acc = vec4(0.0);
  for (var c = 0u; c < D4; c++) {
    let kv = load_k(slot, c);
    acc += vec4(dot(a_rows[c], kv), dot(a_rows[D4 + c], kv), dot(a_rows[2u * D4 + c], kv), dot(a_rows[3u * D4 + c], kv));
  }
  for (var r = 0u; r < R; r++) {
    if (r0 + r < p.rows) { out[(r0 + r) * p.out_stride + i] = acc[r]; }
  }
}
