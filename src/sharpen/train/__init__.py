"""Trainers: thin translations of our configs into TRL / transformers `Trainer` (see common.py for
the output layout)."""
