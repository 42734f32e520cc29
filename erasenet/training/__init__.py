"""Training: the run driver, building and resuming a run (distillation included), its files, the epoch loop, devices."""
