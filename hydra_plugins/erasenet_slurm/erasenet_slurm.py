"""Registers erasenet's Slurm launcher with Hydra: submitit's, with the additions of ``erasenet.cli.slurm``."""

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the cluster extra is not installed: no Slurm launcher
    SlurmLauncher = None

if SlurmLauncher is not None:

    class ErasenetSlurmLauncher(SlurmLauncher):
        """``hydra/launcher=slurm``: job states without sacct, and a sweep that reports its failed jobs."""

        def launch(self, job_overrides, initial_job_idx):
            from erasenet.cli.slurm import launch

            return launch(self, job_overrides, initial_job_idx)
