"""Model backends; each imports its heavy libraries itself, when loaded."""
