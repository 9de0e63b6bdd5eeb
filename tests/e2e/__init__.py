"""The real-cluster tier: a package, so that its conftest is not the fast tier's ``conftest``."""
