"""bench ab: two configurations interleaved in blocks on one engine."""
