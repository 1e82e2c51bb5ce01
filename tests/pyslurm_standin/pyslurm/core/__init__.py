"""pyslurm.core: the controller side."""
