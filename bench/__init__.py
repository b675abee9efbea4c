"""slimnfu.bench: benchmark commands; each writes build/bench/<name>.json."""
