"""From a checkpoint to a pruning plan: config, methods, per-layer summaries, self-text, allocation, surgery."""
