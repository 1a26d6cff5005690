"""The broker's connection handler: one connection is one job.

Invariants:
- Hello, then exactly one request, then events and one final message. Anything
  else (a frame over the limit, undecodable bytes, a wrong type, a second
  request, silence past the handshake time-out) closes that connection only.
- A uid other than root holds at most MAX_CONNECTIONS_PER_UID connections: more
  are closed right after the accept. Every send is bounded by SEND_TIMEOUT_S, so
  a client that stops reading loses its connection instead of holding it.
- Identity comes from the socket (peer.py); authorisation from authz.py; the argv
  from the dispatch table in jobs.py. Nothing here builds an argv. Nothing about
  the request (not even whether its pid exists) is answered before authorisation.
- The client closing its end while a job runs cancels the job; runner.run_step
  kills the job's whole process group before returning.
- Per-uid limits for every job class and a global one: over them the answer is
  BUSY, never a queue. The job slot is released before the final send.
- Every job leaves one audit line (who, what, argv, outcome, duration); client
  text reaches the log only quoted (repr or JSON), never as a line of its own.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
import time

import trio

from perf_mcp_protocol import (
    REQUEST_CLASS,
    Accepted,
    AccessQuery,
    AccessReply,
    BrokerHello,
    ErrorCode,
    ErrorReply,
    FrameReader,
    Hello,
    JobClass,
    JobResult,
    KernelFeatures,
    Progress,
    ProtocolError,
    decode_client_message,
    encode_frame,
    limits,
)

from . import __version__
from .authz import ACTION_IDS, Authorizer
from . import jobs
from .jobs import BUILDERS, READERS, ProgramMissing, Unsupported
from .peer import Peer, PeerGone, boot_ticks, identify, peer_uid
from .runner import pid_exists, run_step

log = logging.getLogger("perf_mcp_broker")
audit = logging.getLogger("perf_mcp_broker.audit")

GRANT_HINT = (
    "ask an administrator to grant the polkit action {action} (for example: add the user to the "
    "'perf-mcp' group with the rules file shipped in polkit/50-perf-mcp.rules), or run as root"
)
# Job classes under max_jobs_per_uid; the others are under MAX_LIGHT_JOBS_PER_UID.
_HEAVY_CLASSES = {JobClass.PROFILE, JobClass.TRACE}


class ClientStalled(Exception):
    """The client did not read what the broker sent within SEND_TIMEOUT_S."""


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _bpftrace_says(info: bytes, feature: bytes) -> bool | None:
    for line in info.splitlines():
        name, _, value = line.strip().partition(b":")
        if name == feature:
            return value.strip() == b"yes"
    return None


def kernel_features() -> KernelFeatures:
    tracing = "/sys/kernel/tracing"
    return KernelFeatures(
        btf=os.path.exists("/sys/kernel/btf/vmlinux"),
        tracefs=os.path.isdir(f"{tracing}/events"),
        kprobe_events=os.path.exists(f"{tracing}/kprobe_events"),
        perf_event_paranoid=_read_int("/proc/sys/kernel/perf_event_paranoid"),
        kptr_restrict=_read_int("/proc/sys/kernel/kptr_restrict"),
        tracepoints=all(os.path.isdir(f"{tracing}/events/{e}") for e in ("sched/sched_switch", "raw_syscalls")),
        uprobes=os.path.exists(f"{tracing}/uprobe_events"),
        fentry=_bpftrace_says(jobs._bpftrace_info or b"", b"kfunc"),
    )



class Broker:
    def __init__(
        self,
        programs: dict[str, str],
        missing: list[str],
        workroot: str,
        output_cap: int = limits.DEFAULT_OUTPUT_CAP,
        authorizer: Authorizer | None = None,
        max_jobs_per_uid: int = limits.MAX_JOBS_PER_UID,
        max_jobs: int = limits.MAX_JOBS_GLOBAL,
        disabled: list[str] | None = None,
    ) -> None:
        self.disabled = sorted(set(disabled or ()))
        # A disabled program is one the broker will not run: the frontend's ladder
        # takes the next rung, exactly as if it were not installed.
        self.programs = {k: v for k, v in programs.items() if k not in self.disabled}
        self.missing = missing
        self.workroot = workroot
        self.output_cap = output_cap
        self.authorizer = authorizer or Authorizer()
        self.max_jobs_per_uid = max_jobs_per_uid
        self.max_jobs = max_jobs
        self._jobs_by_uid: collections.Counter[tuple[int, bool]] = collections.Counter()  # (uid, heavy)
        self._jobs = 0
        self._ids = itertools.count(1)
        self._connections = trio.Semaphore(limits.MAX_CONNECTIONS)
        self._connections_by_uid: collections.Counter[int] = collections.Counter()

    @property
    def idle(self) -> bool:
        """No connection is being served (serve_listener's own waiting slot aside)."""
        return self._connections.value >= limits.MAX_CONNECTIONS - 1

    def hello(self) -> BrokerHello:
        return BrokerHello(
            protocol_version=limits.PROTOCOL_VERSION,
            broker_version=__version__,
            programs=dict(self.programs),
            missing=list(self.missing),
            disabled=list(self.disabled),
            job_kinds=sorted(k.__struct_config__.tag for k in [*BUILDERS, *READERS]) + ["access_query"],
            kernel=kernel_features(),
            output_cap=self.output_cap,
            max_jobs_per_uid=self.max_jobs_per_uid,
            max_jobs=self.max_jobs,
        )

    # ------------------------------------------------------------ serving

    async def serve_listener(self, listener: trio.socket.SocketType) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await self._connections.acquire()
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:
                    self._connections.release()
                    log.warning("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._handle_counted, conn, boot_ticks())

    async def serve_fd_channel(self, control: trio.socket.SocketType) -> None:
        """Connections handed over as fds (SCM_RIGHTS) by our own parent: sudo mode.

        Returns when the control socket closes (the frontend has exited).
        """
        fd_size = socket.CMSG_LEN(16 * 4)
        async with trio.open_nursery() as nursery:
            while True:
                msg, ancdata, _flags, _addr = await control.recvmsg(1, fd_size)
                fds = [
                    fd
                    for level, kind, data in ancdata
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                    for fd in memoryview(data)[: len(data) - len(data) % 4].cast("i")
                ]
                for fd in fds:
                    conn = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
                    await self._connections.acquire()
                    nursery.start_soon(self._handle_counted, conn, boot_ticks())
                if not msg and not fds:
                    nursery.cancel_scope.cancel()
                    return

    async def _handle_counted(self, conn: trio.socket.SocketType, accepted: int) -> None:
        try:
            uid = peer_uid(conn)
            if uid is None or (uid != 0 and self._connections_by_uid[uid] >= limits.MAX_CONNECTIONS_PER_UID):
                log.warning("refusing a connection from uid %s: it has %d open", uid, self._connections_by_uid[uid])
                conn.close()
                return
            self._connections_by_uid[uid] += 1
            try:
                await self.handle(conn, accepted)
            finally:
                self._connections_by_uid[uid] -= 1
                if not self._connections_by_uid[uid]:
                    del self._connections_by_uid[uid]
        finally:
            self._connections.release()

    async def handle(self, conn: trio.socket.SocketType, accepted: int) -> None:
        stream = trio.SocketStream(conn)
        peer: Peer | None = None
        try:
            peer = identify(conn, accepted)
            reader = FrameReader(stream)
            with trio.fail_after(limits.HANDSHAKE_TIMEOUT_S):
                hello = decode_client_message(await reader.read_frame(limits.MAX_REQUEST_FRAME))
                if not isinstance(hello, Hello):
                    raise ProtocolError(f"expected hello, got {type(hello).__name__}")
                if hello.protocol_version != limits.PROTOCOL_VERSION:
                    await self._send(stream, ErrorReply(ErrorCode.PROTOCOL_MISMATCH, f"broker speaks protocol {limits.PROTOCOL_VERSION}"))
                    return
                await self._send(stream, self.hello())
                request = decode_client_message(await reader.read_frame(limits.MAX_REQUEST_FRAME))
                if isinstance(request, Hello):
                    raise ProtocolError("second hello")
            await self._dispatch(peer, stream, request)
        except PeerGone as exc:
            log.info("connection dropped: %s", exc)
        except ProtocolError as exc:  # its text may quote the client: logged as a repr
            log.warning("closing connection from uid %s pid %s: %r", peer and peer.uid, peer and peer.pid, str(exc))
        except trio.TooSlowError:
            log.warning("closing connection from uid %s: handshake time-out", peer and peer.uid)
        except ClientStalled:
            log.warning("closing connection from uid %s: it read nothing for %.0f s", peer and peer.uid, limits.SEND_TIMEOUT_S)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client uid %s went away", peer and peer.uid)
        except Exception:
            # A bug in one job must not take the broker down for everyone else.
            log.exception("internal error serving uid %s", peer and peer.uid)
            with contextlib.suppress(Exception):
                await self._send(stream, ErrorReply(ErrorCode.INTERNAL, "internal broker error; see the broker's log"))
        finally:
            if peer is not None:
                peer.close()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    @staticmethod
    async def _send(stream: trio.SocketStream, message) -> None:
        with trio.move_on_after(limits.SEND_TIMEOUT_S) as scope:
            await stream.send_all(encode_frame(message))
        if scope.cancelled_caught:
            raise ClientStalled()

    # ------------------------------------------------------------ jobs

    async def _dispatch(self, peer: Peer, stream: trio.SocketStream, request) -> None:
        if isinstance(request, AccessQuery):
            await self._send(stream, await self._access(peer))
            return
        job_class = REQUEST_CLASS[type(request)]
        decision = await self.authorizer.check(peer, job_class)
        if not decision.allowed:
            self._audit(peer, request, None, [], "denied", 0.0, decision.reason)
            hint = GRANT_HINT.format(action=ACTION_IDS[job_class]) if job_class else ""
            await self._send(stream, ErrorReply(ErrorCode.PERMISSION_DENIED, f"{decision.reason}; {hint}"))
            return
        pid = getattr(request, "pid", None)
        if pid is not None and not pid_exists(pid):
            await self._send(stream, ErrorReply(ErrorCode.PID_NOT_FOUND, f"no process with pid {pid}"))
            return
        if not self._reserve(peer.uid, job_class):
            self._audit(peer, request, None, [], "busy", 0.0, "")
            await self._send(stream, ErrorReply(ErrorCode.BUSY, self._busy_message()))
            return
        try:
            run = self._run_reader if type(request) in READERS else self._run_job
            final = await run(peer, stream, request, job_class)
        finally:
            self._release(peer.uid, job_class)
        if final is not None:  # sent with the slot free: a client that does not read holds no slot
            await self._send(stream, final)

    async def _access(self, peer: Peer) -> AccessReply:
        granted, denied, reasons = [], [], []
        for job_class in JobClass:
            decision = await self.authorizer.check(peer, job_class, interactive=False)
            (granted if decision.allowed else denied).append(job_class)
            reasons.append(f"{job_class.value}: {decision.reason}")
        return AccessReply(granted=granted, denied=denied, uid=peer.uid, detail="; ".join(reasons))

    def _reserve(self, uid: int, job_class: JobClass | None) -> bool:
        key = (uid, job_class in _HEAVY_CLASSES)
        per_uid = self.max_jobs_per_uid if key[1] else limits.MAX_LIGHT_JOBS_PER_UID
        if self._jobs >= self.max_jobs or self._jobs_by_uid[key] >= per_uid:
            return False
        self._jobs += 1
        self._jobs_by_uid[key] += 1
        return True

    def _release(self, uid: int, job_class: JobClass | None) -> None:
        key = (uid, job_class in _HEAVY_CLASSES)
        self._jobs -= 1
        self._jobs_by_uid[key] -= 1
        if not self._jobs_by_uid[key]:
            del self._jobs_by_uid[key]

    def _busy_message(self) -> str:
        return (
            f"the broker runs at most {self.max_jobs_per_uid} profiling/tracing job and "
            f"{limits.MAX_LIGHT_JOBS_PER_UID} other jobs per user, and {self.max_jobs} jobs in total; "
            "wait for the running job to finish"
        )

    async def _run_job(self, peer: Peer, stream: trio.SocketStream, request, job_class):
        """Run the job; return the final message to send (None when the client went away)."""
        job_id = next(self._ids)
        started = time.monotonic()
        workdir = tempfile.mkdtemp(prefix=f"job{job_id}-", dir=self.workroot)
        results, outcome, detail = [], "error", ""
        ran: list[str] = []  # every step started, for the audit even when cancelled mid-step
        try:
            try:
                steps = BUILDERS[type(request)](request, self.programs, workdir)
            except ProgramMissing as exc:
                outcome, detail = "program-missing", exc.program
                why = "disabled by the administrator" if exc.program in self.disabled else "not installed on this host"
                return ErrorReply(ErrorCode.PROGRAM_MISSING, f"{exc.program} is {why}")
            except Unsupported as exc:
                outcome, detail = "invalid", str(exc)
                return ErrorReply(ErrorCode.INVALID_REQUEST, f"this job has no {exc} backend")
            await self._send(stream, Accepted(job_id=job_id, job_class=job_class))
            expected = sum(max((s.stop_after_s or 0.0) for s in stage) for stage in _stages(steps))
            finished = False
            async with trio.open_nursery() as nursery:
                current = {"step": steps[0].name}
                nursery.start_soon(self._watch_client, stream, nursery.cancel_scope)
                nursery.start_soon(self._progress, stream, current, started, expected, nursery.cancel_scope)
                budget = self.output_cap
                for stage in _stages(steps):
                    current["step"] = "+".join(step.name for step in stage)
                    ran.extend(" ".join(step.argv) for step in stage)
                    stage_results = await _run_stage(stage, max(budget, 0) // len(stage))
                    budget -= sum(len(r.stdout) for r in stage_results)
                    results.extend(stage_results)
                    if not all(_step_ok(r) for r in stage_results):
                        break
                finished = True
                nursery.cancel_scope.cancel()
            if not finished:
                outcome = "cancelled"  # the client went away; its job's group is gone
                return None
            outcome = "ok" if all(_step_ok(r) for r in results) and len(results) == len(steps) else "failed"
            detail = "; ".join(_why_failed(r) for r in results if not _step_ok(r))
            return JobResult(job_id=job_id, steps=results, wall_s=round(time.monotonic() - started, 3))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self._audit(peer, request, job_id, ran, outcome, time.monotonic() - started, detail)

    async def _run_reader(self, peer: Peer, stream: trio.SocketStream, request, job_class):
        job_id = next(self._ids)
        started = time.monotonic()
        outcome = "error"
        try:
            await self._send(stream, Accepted(job_id=job_id, job_class=job_class))
            try:
                result = await trio.to_thread.run_sync(READERS[type(request)], request, self.output_cap)
            except (FileNotFoundError, ProcessLookupError):
                outcome = "pid-not-found"
                return ErrorReply(ErrorCode.PID_NOT_FOUND, f"process {request.pid} has exited")
            outcome = "ok"
            return JobResult(job_id=job_id, steps=[result], wall_s=round(time.monotonic() - started, 3))
        finally:
            self._audit(peer, request, job_id, [type(request).__struct_config__.tag], outcome, time.monotonic() - started, "")

    async def _watch_client(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        """After the request the client only listens: EOF or any byte cancels the job."""
        try:
            await stream.receive_some(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _progress(self, stream, current, started, expected, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(1.0)
            try:
                await self._send(stream, Progress(step=current["step"], elapsed_s=round(time.monotonic() - started, 1), expected_s=expected))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ClientStalled):
                scope.cancel()
                return

    def _audit(self, peer: Peer, request, job_id, argv, outcome: str, wall_s: float, detail: str) -> None:
        audit.info(
            json.dumps(
                {
                    "event": "job",
                    "job_id": job_id,
                    "uid": peer.uid,
                    "pid": peer.pid,
                    "kind": type(request).__struct_config__.tag,
                    "argv": argv,
                    "outcome": outcome,
                    "wall_s": round(wall_s, 3),
                    "detail": detail,
                }
            )
        )


def _stages(steps: list) -> list[list]:
    """Steps grouped into stages: a step with with_previous joins the stage before it."""
    out: list[list] = []
    for step in steps:
        if out and step.with_previous:
            out[-1].append(step)
        else:
            out.append([step])
    return out


async def _run_stage(stage: list, stdout_cap: int) -> list:
    """Run the steps of one stage side by side (execsnoop + exitsnoop); results in step order."""
    if len(stage) == 1:
        return [await run_step(stage[0], stdout_cap=stdout_cap)]
    results: list = [None] * len(stage)

    async def one(i: int) -> None:
        results[i] = await run_step(stage[i], stdout_cap=stdout_cap)

    async with trio.open_nursery() as nursery:
        for i in range(len(stage)):
            nursery.start_soon(one, i)
    return results


def _why_failed(r) -> str:
    """A failed step for the audit: name, how it ended, the end of its stderr (JSON-quoted there)."""
    how = "timed out" if r.timed_out else f"signal {r.signal}" if r.signal else f"exit {r.exit_status}"
    return f"{r.name}: {how}: {r.stderr[-200:].decode(errors='backslashreplace').strip()}"


def _step_ok(result) -> bool:
    """A step stopped by our SIGINT counts as a normal end (perf record)."""
    if result.timed_out:
        return False
    return result.exit_status == 0 or result.signal == 2 or result.exit_status == 130
