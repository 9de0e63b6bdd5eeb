"""The ``fatia`` command and the wiring of ``fatia run``."""
