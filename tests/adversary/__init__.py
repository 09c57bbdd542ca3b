"""Attacks on the network made as a miner would make them: raw AMQP from a miner's own restricted broker user.

Each test asserts the refusal, that the honest network keeps working, and that nothing is lost or credited
to the attacker.
"""
