"""dpeq.nn."""
