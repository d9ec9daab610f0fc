"""The batch-norm core: functional math, modules, kernels, variants, sync, folding,
precise statistics and diagnostics. Depends on torch (and the kernel library) only."""
