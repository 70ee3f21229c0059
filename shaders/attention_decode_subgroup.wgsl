// Split-K paged decode attention (attention_decode.wgsl) for devices with the `subgroups` feature.
// Scores: SG_LANES adjacent lanes of a subgroup share each K row, lane j reading its vec4 chunks j,
// j + SG_LANES, ... (adjacent lanes read adjacent 16 bytes, so each load instruction reads whole
// segments of SG_LANES * 16 bytes), and the partial dot products are summed by a subgroupShuffleXor
// butterfly (every lane of the row ends with the same bits: float addition commutes). A pass covers
// WG / SG_LANES rows, numbered by subgroup_id and subgroup_invocation_id, which assumes full
// subgroups of one size (the TypeScript side takes SG_LANES <= the smallest subgroup size, and WG is
// a multiple of the largest). Maxima: subgroupMax, then one exchange of the subgroups' maxima
// through workgroup memory. Everything else is the plain kernel's (common/attention_decode_kernel.wgsl).
enable subgroups;
//#include attention_decode_kernel

// Lanes per K row: a power of two dividing D4, at most the subgroup size.
override SG_LANES: u32 = 4u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32,
        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) sgs: u32) {
  let t = decode_task(wg);
  if (t.start >= t.n) {
    write_empty(t, wg.x, lid);
    return;
  }
  load_q(t, lid);
  let j = lane % SG_LANES;                       // this lane's first chunk of the row
  let r = (sg * size + lane) / SG_LANES;         // this lane's row within a pass
  let rows = WG / SG_LANES;                      // rows per pass
  var tmax = array<f32, 8>();
  for (var g = 0u; g < GQ; g++) { tmax[g] = NEG_BIG; }
  // every lane runs every pass (the shuffles need the whole subgroup); rows past cnt are computed
  // on slot cnt - 1 and dropped
  for (var i0 = 0u; i0 < t.cnt; i0 += rows) {
    let i = i0 + r;
    let slot = slot_of(t.row, t.start + min(i, t.cnt - 1u));
    var s = array<f32, 8>();
    for (var c = j; c < D4; c += SG_LANES) {
      let k = load_k(slot, c);
      for (var g = 0u; g < GQ; g++) { s[g] += dot(qs[g * D4 + c], k); }
    }
    for (var x = 1u; x < SG_LANES; x <<= 1u) {
      for (var g = 0u; g < GQ; g++) { s[g] += subgroupShuffleXor(s[g], x); }
    }
    if (i < t.cnt) {
      for (var g = 0u; g < GQ; g++) { tmax[g] = max(tmax[g], s[g]); }
      if (j == 0u) {
        for (var g = 0u; g < GQ; g++) { sm[g * PART + i] = s[g]; }
      }
    }
  }
  for (var g = 0u; g < GQ; g++) {
    let sm_max = subgroupMax(tmax[g]);
    if (subgroupElect()) { red[g * sgs + sg] = sm_max; }
  }
  workgroupBarrier();
  var m = array<f32, 8>();
  for (var g = 0u; g < GQ; g++) {
    m[g] = NEG_BIG;
    for (var k = 0u; k < sgs; k++) { m[g] = max(m[g], red[g * sgs + k]); }
  }
  workgroupBarrier(); // red is reused by attend
  attend(t, wg.x, m, lid);
}
