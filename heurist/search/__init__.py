"""AI search: documents chunked and embedded into the database, retrieved by cosine similarity, answered
by an LLM job that cites numbered sources. Importing this package never imports torch (the gateway must
start fast); the embedder loads it on first use."""
