"""Small helpers shared by every part of nasnet_det (file I/O that survives a kill)."""
