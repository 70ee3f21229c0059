// Row softmax (softmax.wgsl) with subgroup reductions, for devices with the `subgroups` feature.
//#include reduce_subgroup
//#include softmax_kernel
