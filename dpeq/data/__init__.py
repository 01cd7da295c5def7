"""dpeq.data."""
