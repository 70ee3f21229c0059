// The decode kernel of matmul.wgsl with subgroup reductions, for devices with the `subgroups`
// feature: each subgroup sums its threads' partial dot products with subgroupAdd and one thread of
// it stores them in workgroup memory; after one barrier, each output adds its subgroups' sums in
// subgroup order. The dot products, prologue and epilogue are matmul.wgsl's (common/matmul_io.wgsl).
enable subgroups;
//#include weights
//#include activation
//#include matmul_io

// the subgroups' sums: value v of subgroup j at v * num_subgroups + j (at most MV_WG subgroups)
var<workgroup> red: array<f32, MV_WG * MV_M * MV_ROWS>;

@compute @workgroup_size(MV_WG)
fn decode(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
          @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32,
          @builtin(num_subgroups) sgs: u32) {
  let outs = decode_outputs();
  let n0 = (wg.x + wg.y * nwg.x) * outs;
  if (n0 >= p.n) { return; }
  let acc = decode_acc(n0, lid);
  for (var m = 0u; m < MV_M; m++) {
    for (var r = 0u; r < MV_ROWS; r++) {
      let s = subgroupAdd(acc[m][r]);
      if (subgroupElect()) { red[(m * MV_ROWS + r) * sgs + sg] = s; }
    }
  }
  workgroupBarrier();
  for (var v = lid; v < MV_M * outs; v += MV_WG) {
    let m = v / outs;
    let r = v % outs;
    let ru = min(r + outs, MV_ROWS - 1u); // the up row (SwiGLU only)
    var a = 0.0;
    var up = 0.0;
    for (var j = 0u; j < sgs; j++) {
      a += red[(m * MV_ROWS + r) * sgs + j];
      up += red[(m * MV_ROWS + ru) * sgs + j];
    }
    decode_store(n0, m, r, a, up);
  }
}
