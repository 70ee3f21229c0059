// RMSNorm (rmsnorm.wgsl) with subgroup reductions, for devices with the `subgroups` feature.
//#include reduce_subgroup
//#include rmsnorm_kernel
