"""Redis key names the benchmark's task bodies write to, shared by every contestant."""

COUNTER = "bench:counter"
STAMPS = "bench:stamps"
STARTED = "bench:started"
DONE = "bench:done"
HOLDING = "bench:holding"

RAW_STREAM = "raw:stream"
RAW_GROUP = "raw"
