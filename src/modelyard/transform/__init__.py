"""Batch transform jobs: datasets read in mini-batches, run through temporary replicas of a
model, and written back in input order, resumably."""
