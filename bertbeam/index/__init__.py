"""The embedded search index: ``bertbeam index build`` over embedding results, ``bertbeam
search`` over the index (FAISS HNSW, rows in Parquet, a manifest written last)."""
