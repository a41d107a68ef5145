"""The self-improvement loop: collect -> build -> train -> evaluate, resumable, round after round."""
