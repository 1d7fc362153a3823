"""Benchmarks of streamtasks against the raw-Redis limit and its peers: python -m benchmarks.run"""
