"""Operating the cache: admin API, hot reload, purges and their fan-out to workers and
replicas, warm-restart snapshots, ``audit``, ``explain``, ``report`` and the figures poller.
"""
