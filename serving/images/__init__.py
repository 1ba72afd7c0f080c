"""Image handling: sources, SSRF guard, safe decoding and the model grid."""
