"""The compute side, the only code that imports torch: three roles and their test hooks.

``workers.miner`` runs jobs (device, model files, pipelines, runtime, middleware, heartbeats, the multi-GPU
supervisor, ``heurist doctor``); ``workers.audit`` replays sampled jobs on trusted hardware with the miner's
own pipelines; ``workers.bench`` times models, audits and the job path; ``workers.testing`` holds the
cheats the audit's tests and ``heurist demo --with-cheater`` plug into an honest miner.
"""
