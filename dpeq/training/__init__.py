"""dpeq.training."""
