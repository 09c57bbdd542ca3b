"""Static Flower options for `heurist flower` (a tornado config file: every name that is a Flower option is
applied, the rest ignored). What differs per deployment (broker, port, address, basic auth, management API)
comes from heurist.settings and the command's flags, which override this file; so it reads no environment
and holds no secret."""

# State lives in memory only: after a restart Flower re-learns the workers from events and `inspect` in a
# few seconds, and no file of task arguments (prompts, presigned URLs) is left on the dashboard's disk.
persistent = False
max_tasks = 10000
max_workers = 5000

# A miner that stopped or was banned leaves the /metrics series after 10 minutes.
purge_offline_workers = 600

# Miners run the remote-control handlers, so each one answers `inspect` (stats, active queues) within this.
inspect_timeout = 2000.0

# The dashboard shows; it does not command. Flower's broker user is an administrator that reaches every
# worker, so shutdown, pool resizing, revokes and sending tasks stay off; use the trusted CLI instead
# (`heurist broker revoke`, the auditor's bans). Point --conf at your own file to change this.
read_only = True

# The task list leaves out args/kwargs: they hold prompts and presigned upload URLs.
tasks_columns = "name,uuid,state,received,started,runtime,worker"
natural_time = True

# Behind a reverse proxy under a path, set it here, e.g. url_prefix = "flower".
