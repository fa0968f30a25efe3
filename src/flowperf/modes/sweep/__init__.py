"""bench sweep: one run per load level, capacity within SLOs."""
