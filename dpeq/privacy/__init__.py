"""dpeq.privacy."""
