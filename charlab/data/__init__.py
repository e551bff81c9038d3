"""Data layer: the records every stage reads and writes, JSONL I/O with resume, prompt synthesis."""
