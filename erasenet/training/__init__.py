"""Training: the run driver, building and resuming a run, its files and checkpoints, the epoch loop, devices."""
