// Peak FLOP-rate probe for the kernel benchmarks: eight independent vec4 multiply-add chains per
// invocation keep the ALUs busy without touching memory; the result is written so the compiler
// cannot drop the work. FLOPs per invocation: iters * 8 chains * 4 lanes * 2.
override WG: u32 = 256;

struct Params {
  iters: u32,
  mul: f32,
  add: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let id = gid.x + gid.y * nwg.x * WG;
  let s = f32(id % 1024u) * 1e-3;
  var a0 = vec4f(s, s + 0.1, s + 0.2, s + 0.3);
  var a1 = a0 + 1.0; var a2 = a0 + 2.0; var a3 = a0 + 3.0;
  var a4 = a0 + 4.0; var a5 = a0 + 5.0; var a6 = a0 + 6.0; var a7 = a0 + 7.0;
  let m = vec4f(p.mul);
  let c = vec4f(p.add);
  for (var i = 0u; i < p.iters; i++) {
    a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
    a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
  }
  let t = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7);
  out[id] = t.x + t.y + t.z + t.w;
}
