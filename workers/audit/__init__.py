"""Auditor-side checks: replay a miner's job on a trusted worker and compare the outputs within tolerance bands."""
