"""The miner: detect the device, verify and load pipelines once, then run jobs and sign what was done.

The auditor and the benchmarks load models through this package too (``launch.plan_miner``,
``launch.load_pipelines``): a replay is only a fair check if it runs the miner's own code.
"""
