"""dpeq.models."""
