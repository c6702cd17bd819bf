"""kubetune API types shared by the operator and the trainer (no torch here)."""
