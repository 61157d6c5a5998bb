"""wstrace benchmarks: bare and instrumented variants, interleaved, on loopback."""
