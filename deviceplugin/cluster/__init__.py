"""The Kubernetes API: the per-node ConfigMap in, the Node's labels, annotation and Events out.

Only ``fatia run`` in API mode imports this package (and with it the ``kubernetes``
client, which is slow to import and large).
"""
