// Workgroup-wide reductions with subgroup operations: the same functions as reduce.wgsl (a kernel
// body includes one or the other), with two barriers instead of log2(WG). Every invocation writes
// its value, then each subgroup sums the whole workgroup's values: its active invocations, ranked
// by subgroupExclusiveAdd, take every `lanes`-th value serially, and subgroupAdd combines them.
// Nothing assumes how local invocation indices map onto subgroups (WebGPU does not define it), and
// every subgroup adds the same values in the same order, so all invocations get the same result.
// Call from uniform control flow with all WG invocations active.
enable subgroups;

var<workgroup> reduce_scratch: array<f32, WG>;

fn wg_sum(v: f32, lid: u32) -> f32 {
  reduce_scratch[lid] = v;
  workgroupBarrier();
  let lanes = subgroupAdd(1u);
  var s = 0.0;
  for (var i = subgroupExclusiveAdd(1u); i < WG; i += lanes) { s += reduce_scratch[i]; }
  let r = subgroupAdd(s);
  workgroupBarrier();
  return r;
}

fn wg_max(v: f32, lid: u32) -> f32 {
  reduce_scratch[lid] = v;
  workgroupBarrier();
  let lanes = subgroupAdd(1u);
  var s = reduce_scratch[0];
  for (var i = subgroupExclusiveAdd(1u); i < WG; i += lanes) { s = max(s, reduce_scratch[i]); }
  let r = subgroupMax(s);
  workgroupBarrier();
  return r;
}
