"""hpcgate's side-by-side benchmarks (`make bench`, or `python -m benchmarks [NAME ...]`)."""
