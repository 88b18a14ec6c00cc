"""Models: resolve a reference, load with dtype, build adapters."""
