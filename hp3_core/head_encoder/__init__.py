"""HP3's head encoder: face analysis, head crop, CLIP vision features, the token decoder."""
