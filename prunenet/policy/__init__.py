"""The PruneNet policy: the network, its REINFORCE training, the rewards it learns from, spectra and features."""
