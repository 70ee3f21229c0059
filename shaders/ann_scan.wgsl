// Key index (src/ann/): exact scores of the keys in each query's probed lists.
//
// Lists: `lists` holds C lists of `cap` key ids ([C, cap]) and after them the overflow list
// (over_cap ids); counts[j] says how many list j was given (entries past its capacity went to the
// overflow list, whose count is counts[C]). Workgroup (x = probe slot, y = query): slot p < nprobe
// scans list probes[q, p], slot nprobe the overflow list. A key in several probed lists is scored
// once: the first workgroup to set its bit in the query's seen bitmap (zeroed before) scores it,
// the others write id -1 (not a candidate for the top-k), as do slots past a list's end. Candidate slots per query:
// [nprobe * cap + over_cap], list p's at p * cap; touched[q] counts the keys scored.
//#include paged_kv

override HEAD_DIM: u32 = 128;
override BLOCK_SIZE: u32 = 16;
override KV_F16: bool = false;
override D4: u32 = HEAD_DIM / 4u;
const WG: u32 = 64u;

struct Params {
  table_stride: u32,
  row: u32,
  clusters: u32,
  cap: u32,
  over_cap: u32,
  nprobe: u32,
  words: u32,      // seen-bitmap words per query
  queries: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k_pool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> block_table: array<u32>;
@group(0) @binding(4) var<storage, read> probes: array<i32>;
@group(0) @binding(5) var<storage, read> lists: array<i32>;
@group(0) @binding(6) var<storage, read> counts: array<u32>;
// [queries * words] seen bits, then [queries] keys scored
@group(0) @binding(7) var<storage, read_write> seen: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read_write> cand_scores: array<f32>;
@group(0) @binding(9) var<storage, read_write> cand_ids: array<i32>;
// Declared for paged_kv.wgsl's load_v; never bound.
@group(0) @binding(15) var<storage, read> v_pool: array<vec4<u32>>;

var<workgroup> qv: array<vec4<f32>, D4>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let probe = wg.x;
  let b = wg.y;
  for (var c = lid; c < D4; c += WG) { qv[c] = q[b * D4 + c]; }
  workgroupBarrier();
  var base = p.clusters * p.cap;
  var len = min(counts[p.clusters], p.over_cap);
  var span = p.over_cap;
  if (probe < p.nprobe) {
    let j = probes[b * p.nprobe + probe];
    base = u32(max(j, 0)) * p.cap;
    len = select(0u, min(counts[u32(max(j, 0))], p.cap), j >= 0);
    span = p.cap;
  }
  let slots = p.nprobe * p.cap + p.over_cap;
  let out = b * slots + probe * p.cap;
  var scored = 0u;
  for (var t = lid; t < span; t += WG) {
    var s = 0.0;
    var id = -1;
    if (t < len) {
      id = lists[base + t];
      let bit = 1u << (u32(id) & 31u);
      let old = atomicOr(&seen[b * p.words + u32(id) / 32u], bit);
      if ((old & bit) != 0u) {
        id = -1;
      } else {
        let slot = slot_of(p.row, u32(id));
        var acc = 0.0;
        for (var c = 0u; c < D4; c++) { acc += dot(qv[c], load_k(slot, c)); }
        s = acc;
        scored += 1u;
      }
    }
    cand_scores[out + t] = s;
    cand_ids[out + t] = id;
  }
  if (scored > 0u) { atomicAdd(&seen[p.queries * p.words + b], scored); }
}
