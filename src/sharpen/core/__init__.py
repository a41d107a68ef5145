"""The ground layer: trees, budgets, meters, tasks, answers, errors, files and statistics.
Nothing here imports from any other layer of sharpen."""
