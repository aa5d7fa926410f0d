"""Retrieval: exact chunked top-k search, ranking metrics, hard-negative mining."""
