"""CPU-only machinery: the C++ decode-attention kernel and the host allocator settings."""
