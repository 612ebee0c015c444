"""Leveret against RabbitMQ: the same scenarios on both brokers, alternated and repeated, reported as ratios.

Run `python -m bench` from the repository root; see bench/README.md.
"""
