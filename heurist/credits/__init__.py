"""API keys and their credit balances in Standard Credit Units (1 unit = SD1.5 512x512 at 20 steps)."""
