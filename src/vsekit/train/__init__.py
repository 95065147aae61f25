"""Training: loop, schedules, checkpoints, run directories."""
