//! The control planes' REST API (Kuma-compatible paths on port 5681) and diagnostics server
//! (port 5680), shared by `global-cp` and `zone-cp`.
