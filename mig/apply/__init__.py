"""Applying MIG layouts: diff, journal, NVML steps and rollback."""
