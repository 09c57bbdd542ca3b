"""Heurist: a decentralized AI compute network on Celery."""

__version__ = "0.1.0"
