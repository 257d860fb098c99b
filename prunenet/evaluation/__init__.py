"""The quality report: dense vs pruned on the same tokens, in memory (small models) or streamed layer by layer."""
