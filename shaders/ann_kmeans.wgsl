// Key index (src/ann/): spherical k-means over the build queries (f32 [m, HEAD_DIM]).
//   init:      centroid j = point floor(j * points / clusters); one invocation per centroid.
//   normalize: each point scaled to unit length in place (a zero row stays zero); one invocation per point.
//   assign:    assign[i] = the centroid with the largest c · x_i (ties: the lowest index); one invocation per point.
//   update:    centroid j = the normalised sum of its points (an empty cluster keeps its centroid);
//              one workgroup per centroid, its invocations over the dimensions.
//#include reduce

override HEAD_DIM: u32 = 128;
override WG: u32 = 64;
override D4: u32 = HEAD_DIM / 4u;

struct Params {
  points: u32,
  clusters: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> pts: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> cent: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> assign_of: array<u32>;

fn point_index(wg: vec3u, nwg: vec3u, lid: u32) -> u32 {
  return (wg.x + wg.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn normalize_rows(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = point_index(wg, nwg, lid);
  if (i >= p.points) { return; }
  var s = 0.0;
  for (var c = 0u; c < D4; c++) { s += dot(pts[i * D4 + c], pts[i * D4 + c]); }
  if (s > 0.0) {
    let inv = inverseSqrt(s);
    for (var c = 0u; c < D4; c++) { pts[i * D4 + c] *= inv; }
  }
}

@compute @workgroup_size(WG)
fn init(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = point_index(wg, nwg, lid);
  if (j >= p.clusters) { return; }
  // floor(j * points / clusters) without overflowing u32
  let i = j * (p.points / p.clusters) + (j * (p.points % p.clusters)) / p.clusters;
  for (var c = 0u; c < D4; c++) { cent[j * D4 + c] = pts[i * D4 + c]; }
}

@compute @workgroup_size(WG)
fn assign(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = point_index(wg, nwg, lid);
  if (i >= p.points) { return; }
  var best = 0u;
  var best_v = -3.4e38;
  for (var j = 0u; j < p.clusters; j++) {
    var s = 0.0;
    for (var c = 0u; c < D4; c++) { s += dot(cent[j * D4 + c], pts[i * D4 + c]); }
    if (s > best_v) {
      best = j;
      best_v = s;
    }
  }
  assign_of[i] = best;
}

@compute @workgroup_size(WG)
fn update(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = wg.x + wg.y * nwg.x;
  if (j >= p.clusters) { return; }
  var sq = 0.0;
  var sums = array<vec4<f32>, 4>(vec4(0.0), vec4(0.0), vec4(0.0), vec4(0.0));
  // invocation lid sums chunks lid, lid + WG, ... (at most 4 each: HEAD_DIM <= 16 * WG)
  // only invocations that own a chunk walk the points
  for (var i = 0u; i < select(0u, p.points, lid < D4); i++) {
    if (assign_of[i] == j) {
      for (var t = 0u; t < 4u; t++) {
        let c = lid + t * WG;
        if (c < D4) { sums[t] += pts[i * D4 + c]; }
      }
    }
  }
  for (var t = 0u; t < 4u; t++) { sq += dot(sums[t], sums[t]); }
  let total = wg_sum(sq, lid);
  if (total > 0.0) {
    let inv = inverseSqrt(total);
    for (var t = 0u; t < 4u; t++) {
      let c = lid + t * WG;
      if (c < D4) { cent[j * D4 + c] = sums[t] * inv; }
    }
  }
}
