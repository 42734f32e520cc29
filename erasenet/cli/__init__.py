"""The Hydra face: the job a run belongs to, launchers, Slurm, sweep checks, Hydra errors as paragraphs, --help."""
