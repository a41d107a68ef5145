"""Reports of runs and searches: the run report, the tree viewer, the seeds report, experiment tracking."""
