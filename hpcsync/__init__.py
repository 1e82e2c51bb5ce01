"""hpcsync: Slurm jobs into an experiment tracker."""

__version__ = "0.1.0"
