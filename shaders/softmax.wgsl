// Row-wise softmax: y[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max)). One workgroup per row;
// rows may be laid out over a 2D grid when they exceed the per-dimension workgroup limit.
//
// Two passes over the row: each invocation keeps an online (running max, rescaled sum) pair over
// its strided elements, the workgroup combines them (max, then the sum rescaled to that max), and
// a second pass writes the normalised values. Only finite inputs take part: -inf (a masked logit)
// and any other non-finite value get probability 0, tested on the bits so that the result does not
// depend on how a GPU treats infinities. A row with no finite value is all zeros.
// The kernel is common/softmax_kernel.wgsl, over the workgroup-memory reductions; softmax_subgroup.wgsl
// is the same kernel over subgroup reductions.
//#include reduce
//#include softmax_kernel
