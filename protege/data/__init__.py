"""Task rows in and out: JSONL/CSV/Parquet files, hub datasets (by `HF_ENDPOINT`), the packaged
samples."""
