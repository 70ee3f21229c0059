// RMSNorm: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w. One workgroup per row; rows may
// be laid out over a 2D grid when they exceed the per-dimension workgroup limit.
// Entry points:
//   main:  writes the normalised rows y.
//   scale: writes only each row's scale 1 / sqrt(mean(x^2) + eps); the matmul that consumes the
//          normalised rows applies x * scale * w in its prologue (matmul.wgsl, NORM), with the
//          same f32 operations as `main`, so the fused path gives the same bits.
// The kernel is common/rmsnorm_kernel.wgsl, over the workgroup-memory reductions; rmsnorm_subgroup.wgsl
// is the same kernel over subgroup reductions.
//#include reduce
//#include rmsnorm_kernel
