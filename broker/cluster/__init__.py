"""The cluster's pure logic (sans-IO): etcd requests as data, key layout, records, placement, membership.

broker/server/etcd.py sends the requests; broker/server/cluster.py runs the tasks that feed these objects.
"""
