"""Cluster stress simulator: how many GPUs a traffic pattern needs at a latency SLA, and what batching buys.

The simulator replays request arrivals against N identical GPUs under a batching policy and a linear
service-time model, fast enough to sweep millions of requests across schedulers and cluster sizes in seconds.
"""
