"""Static Celery configuration shared by every role. Deployment values (broker URL) come from
``heurist.settings``; this file holds only what is the same everywhere, so it reads no environment."""

# Messages are JSON only: miners are untrusted, so no pickle ever crosses the broker.
task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"

# No result backend: miners must not hold database or cache credentials. Miners send their signed
# completions to the trusted `ledger` queue themselves (callbacks in messages are ignored: heurist.unlinked),
# and clients read the ledger.
result_backend = None
task_ignore_result = True
task_store_errors_even_if_ignored = False

# GPU work: one job at a time per worker, acknowledged only after it is done, requeued if the
# worker dies mid-job. Tasks are idempotent (the ledger credits a job once).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_acks_on_failure = True
task_acks_on_timeout = True

# Every job names its model's queue explicitly (heurist.routing). Anything sent without one lands on
# `unrouted`, which no miner consumes and monitoring shows, instead of on a miner that cannot serve it.
task_create_missing_queues = True
task_default_queue = "unrouted"

# Workers outlive the broker (heurist.reconnect): they reconnect for as long as it takes, at kombu's back-off
# (2 s, 4 s, ... at most 30 s apart), and a queue still held by their previous connection is retried too.
# create_app adds the AMQP heartbeat (Settings.broker_heartbeat_s) and the publish retry policy, and every
# send_task waits for the broker's confirm (heurist.confirms).
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
worker_consumer = "heurist.reconnect:Consumer"

worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
worker_redirect_stdouts = False
