"""Authorisation of a job class for a peer: uid 0 passes, otherwise polkit decides.

Invariants:
- polkit is asked about subject unix-process {pid, start-time, uid} taken from the
  socket (peer.py), never from a message. (polkit 123+ also takes a "pidfd";
  polkit 122, Debian 12's, does not, so none is sent.)
- Only an explicit "authorized" answer allows. polkit missing, a D-Bus error, a
  time-out, or a challenge answer all mean denied.
- After polkit answers yes, the peer's pidfd must still be alive: a client that
  exited meanwhile gets nothing run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call
from jeepney.io.trio import open_dbus_router

from perf_mcp_protocol import JobClass, limits

from .peer import Peer

log = logging.getLogger("perf_mcp_broker.authz")

ACTION_IDS = {
    JobClass.PROFILE: "org.perfmcp.profile",
    JobClass.TRACE: "org.perfmcp.trace",
    JobClass.INSPECT: "org.perfmcp.inspect",
}
_AUTHORITY = DBusAddress(
    "/org/freedesktop/PolicyKit1/Authority",
    bus_name="org.freedesktop.PolicyKit1",
    interface="org.freedesktop.PolicyKit1.Authority",
)
_ALLOW_USER_INTERACTION = 0x1


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


async def polkit_check(peer: Peer, action_id: str, interactive: bool) -> Decision:
    subject = (
        "unix-process",
        {"pid": ("u", peer.pid), "start-time": ("t", peer.start_time), "uid": ("i", peer.uid)},
    )
    flags = _ALLOW_USER_INTERACTION if interactive else 0
    msg = new_method_call(_AUTHORITY, "CheckAuthorization", "(sa{sv})sa{ss}us", (subject, action_id, {}, flags, ""))
    try:
        with trio.fail_after(limits.POLKIT_TIMEOUT_S):
            async with open_dbus_router(bus="SYSTEM") as router:
                reply = await router.send_and_get_reply(msg)
    except trio.TooSlowError:
        return Decision(False, "polkit did not answer in time")
    except (OSError, ConnectionError, ValueError) as exc:
        return Decision(False, f"polkit unavailable ({exc.__class__.__name__}: {exc})")
    if reply.header.message_type == MessageType.error:
        name = reply.header.fields.get(HeaderFields.error_name, "unknown error")
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        return Decision(False, f"polkit error {name}: {text}"[:300])
    is_authorized, is_challenge, _details = reply.body[0]
    if is_authorized:
        return Decision(True, "granted by polkit")
    if is_challenge:
        return Decision(False, "polkit requires authentication and no agent answered")
    return Decision(False, "not authorized by polkit")


class Authorizer:
    """Per-class decisions; trusted_uids are set by the broker's own parent (sudo mode)."""

    def __init__(self, trusted_uids: frozenset[int] = frozenset()) -> None:
        self.trusted_uids = trusted_uids | {0}

    async def check(self, peer: Peer, job_class: JobClass | None, interactive: bool = True) -> Decision:
        if job_class is None:
            return Decision(True, "no authorisation needed")
        if peer.uid in self.trusted_uids:
            decision = Decision(True, "uid 0" if peer.uid == 0 else "trusted by the broker's parent")
        else:
            decision = await polkit_check(peer, ACTION_IDS[job_class], interactive)
        if decision.allowed and not peer.alive():
            return Decision(False, "the client exited before authorisation completed")
        return decision
