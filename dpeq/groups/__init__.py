"""dpeq.groups."""
