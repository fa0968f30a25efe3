"""The run directory contract: records, durable writes, reading back, summaries."""
