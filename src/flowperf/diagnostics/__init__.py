"""bench doctor: this host's findings, and the client ceiling measured on the mock server."""
