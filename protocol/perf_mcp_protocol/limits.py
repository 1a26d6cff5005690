"""Every limit of the wire and of jobs, in one place.

Both the frontend and the broker import these; neither side has its own copy.
"""

PROTOCOL_VERSION = 2

# A frame is a 4-byte big-endian length followed by a msgpack body.
FRAME_HEADER_BYTES = 4
# Requests (client -> broker) are small typed messages.
MAX_REQUEST_FRAME = 64 * 1024

# Output caps (root-side). The broker's configured cap must lie in this range;
# the reply frame limit a client applies is cap + REPLY_OVERHEAD.
MIN_OUTPUT_CAP = 4 * 1024
DEFAULT_OUTPUT_CAP = 64 * 1024 * 1024
MAX_OUTPUT_CAP = 256 * 1024 * 1024
STDERR_CAP = 256 * 1024
REPLY_OVERHEAD = 4 * STDERR_CAP + 64 * 1024
# Broker hello, progress, error and access replies are small.
MAX_SMALL_REPLY_FRAME = 64 * 1024

# Parameter ranges shared by the MCP input schemas and the broker's types.
PID_MIN = 1
PID_MAX = 4_194_304  # PID_MAX_LIMIT on 64-bit kernels
CPU_PROFILE_DURATION_S = (1.0, 60.0)
CPU_PROFILE_FREQUENCY_HZ = (1, 999)
# Trace jobs (integers only: they become positional script parameters).
OFFCPU_DURATION_S = (1, 60)
TRACE_SHORT_DURATION_S = (1, 30)
TRACE_LONG_DURATION_S = (1, 60)
MIN_BLOCK_US = (1, 10_000_000)
SYSCALL_TOP_N = (1, 500)
EXEC_MAX_ARGS = (1, 60)
UID_MAX = 4_294_967_294
LINEAR_BUCKET_MS = (1, 100)
MIN_LATENCY_MS = (0, 10_000)

# Wall-clock grace added to a job's requested duration before it is killed.
JOB_GRACE_S = 20.0
# After SIGINT (normal stop) / SIGTERM, how long before the next signal.
STOP_ESCALATION_S = 2.0
# The same when the client has gone (cancel): the output is not wanted.
CANCEL_ESCALATION_S = 0.5

# Concurrency: one profiling/tracing job per uid, a few in total. Jobs of the
# other classes (inspect, tool features) are quick, but limited per uid too.
MAX_JOBS_PER_UID = 1
MAX_LIGHT_JOBS_PER_UID = 2
MAX_JOBS_GLOBAL = 4

# Connections served at once, and per uid other than root (extra ones of a uid are
# closed at once, so one user cannot hold every slot).
MAX_CONNECTIONS = 128
MAX_CONNECTIONS_PER_UID = 16

# A client must send Hello and its request promptly.
HANDSHAKE_TIMEOUT_S = 3.0
# A client must read what the broker sends: a send blocked this long closes the connection.
SEND_TIMEOUT_S = 10.0
# The broker's polkit call (it may wait on an authentication agent).
POLKIT_TIMEOUT_S = 60.0


def reply_frame_limit(output_cap: int) -> int:
    """Largest reply frame a client accepts from a broker announcing output_cap."""
    return min(max(output_cap, MIN_OUTPUT_CAP), MAX_OUTPUT_CAP) + REPLY_OVERHEAD
