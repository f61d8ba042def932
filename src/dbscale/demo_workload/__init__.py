"""``dbscale demo --workload``: what each layer buys, measured on a shop dataset with YCSB-style workloads.

``data`` loads the dataset, ``ycsb`` (pure) draws the operations, ``layers`` says how a read and a
write go through each stack, ``runner`` drives the client threads and counts, ``report`` prints the
table and writes the HTML report, ``edge_app`` is the application behind the HTTP edge.
"""
