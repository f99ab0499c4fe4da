"""HP3 core."""
