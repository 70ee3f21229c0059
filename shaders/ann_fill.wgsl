// Key index (src/ann/): buf[i] = value for i < n (clears the search's seen-bits and counters).
// Workgroups past 65535 fold into y (kernels/grid.ts).

const WG: u32 = 64u;

struct Params {
  n: u32,
  value: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> buf: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * nwg.x) * WG + lid;
  if (i < p.n) { buf[i] = p.value; }
}
