"""The Kubernetes API: the per-node ConfigMap in, the Node's labels, annotation and Events out."""
