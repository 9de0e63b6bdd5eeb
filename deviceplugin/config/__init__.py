"""The node's configuration: where it comes from, its schema, and NVIDIA's formats."""
