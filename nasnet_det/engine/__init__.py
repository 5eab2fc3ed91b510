"""The training engine shared by classification, detection, the search and the pipeline: process-group
helpers, children that die with their launcher, RNG state, resume-point truncation of metrics files and the
crash-safe checkpointer's common part. Depends on nothing else of the package but :mod:`nasnet_det.utils`."""
