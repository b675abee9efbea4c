"""slimnfu.bench: benchmark commands; each writes bench/<name>.json in the build root."""
