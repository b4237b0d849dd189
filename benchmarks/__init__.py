"""genrec's benchmarks: speed, memory and quality measured on the shared datasets, each writing its results as JSON
under benchmarks/results/ (committed; `python -m benchmarks.report` renders docs/results.md from them). Run from the repository root as modules, e.g. `python -m benchmarks.bench_hybrid --help`;
`benchmarks.common` holds what they share (machine facts, dataset preparation, the arms loop, the report)."""
