"""The medium- and large-data routes: config, the model with a frozen prefix, training data and
DDP, the linear-probe start, checkpoints, the training loop and its curves. Imports everything below head."""
