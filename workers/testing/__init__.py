"""Test and demo hooks that make an honest miner dishonest; production code never imports this package."""
