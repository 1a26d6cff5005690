"""Errors an agent can act on, through a real MCP client and the real frontend as a test user.

- INVALID_PARAMS names the parameter, the value given and the allowed range, and is
  recoverable (the same call with that parameter fixed works: it is made, and answers).
- Parameters each in range that cannot go together are refused the same way: perf_fd_trace
  interval_s > duration_s, perf_offcpu_profile min_block_us longer than duration_s,
  perf_vfs_latency min_latency_ms=0 without a pid, perf_io_latency mode=trace with a fractional duration.
- PERMISSION_DENIED (the denied user, a real broker, the real polkit) names the grant refused
  and lists the tools that still work without it; those tools are then called as the same
  user, and answer.
- A polkit that does not know perf-mcp's actions (the .policy file not installed) is a set-up
  error naming the missing file (code PERMISSION_DENIED, message "set-up: ..."): a real polkitd on a private D-Bus, started here in a mount
  namespace where /usr/share/polkit-1/actions lacks org.perfmcp.policy (the machine's own
  polkit and its files are not touched), and a real broker that asks it.
- perf_info tells this machine's virtualisation: a KVM guest (kvm-clock, the cpuid
  hypervisor flag), Firecracker (no DMI; its kernel command line) - and the parser on the
  other shapes (DMI of a KVM/QEMU guest, Firecracker's virtio-mmio command line, bare metal).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import helpers

POLICY = "/usr/share/polkit-1/actions/org.perfmcp.policy"
POLKITD = "/usr/lib/polkit-1/polkitd"



def error_of(result: Any) -> dict[str, Any]:
    env = helpers.envelope(result)
    assert result.is_error is True and env["success"] is False, env
    return env["error"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- without a broker


async def test_invalid_params_name_the_parameter_the_value_and_the_range(
        test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    cases = [
        ("perf_cpu_profile", {"duration_s": 0}, "duration_s", "0", "from 1"),
        ("perf_fd_trace", {"pid": 1, "duration_s": 99}, "duration_s", "99", "from 1 to 60"),
        ("perf_runq_latency", {"top_n": 1000}, "top_n", "1000", "from 1 to 100"),
        ("perf_tcp_trace", {"remote_port": 70000}, "remote_port", "70000", "65535"),
        ("perf_bio_latency", {"histogram_type": "cubic"}, "histogram_type", "cubic", "'linear', 'log2'"),
        ("perf_exec_trace", {"pid": "1; reboot"}, "pid", "1; reboot", "an integer"),
    ]
    async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
        for tool, args, field, value, allowed in cases:
            err = error_of(await client.call_tool(tool, args))
            print(f"\n{tool} {args}: {err['message']} | {err['suggestion']}")
            assert err["code"] == "INVALID_PARAMS" and err["recoverable"] is True, err
            assert field in err["message"] and value in err["message"] and allowed in err["message"], err
            assert field in err["suggestion"], err
        err = error_of(await client.call_tool("perf_snapshot", {"windows": 3}))
        assert err["code"] == "INVALID_PARAMS" and err["recoverable"] is True
        assert "'windows'" in err["message"] and "interval_s" in err["message"], err
        # recoverable: the same call with the named parameter fixed answers
        ok = await client.call_tool("perf_net_health", {"interface": "lo"})
        assert helpers.ok_data(ok)["summary"]


async def test_impossible_combinations_are_refused_with_what_would_work(
        test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    sleeper = helpers.spawn_as(test_users.granted, ["/bin/sleep", "60"])
    try:
        async with helpers.mcp_client(test_users.granted, shared_tmp / "no-broker.sock") as client:
            err = error_of(await client.call_tool("perf_fd_trace", {"pid": sleeper.pid, "duration_s": 5,
                                                                    "interval_s": 10}))
            assert err["code"] == "INVALID_PARAMS" and err["recoverable"] is True, err
            assert "interval_s 10" in err["message"] and "duration_s 5" in err["message"], err
            assert "interval_s <= 5" in err["suggestion"], err
            err = error_of(await client.call_tool("perf_vfs_latency", {"min_latency_ms": 0}))
            assert err["code"] == "INVALID_PARAMS" and err["recoverable"] is True and "min_latency_ms" in err["message"]
            err = error_of(await client.call_tool("perf_io_latency", {"mode": "trace", "duration_s": 1.5}))
            assert err["code"] == "INVALID_PARAMS" and err["recoverable"] is True and "duration_s=2" in err["suggestion"]
            err = error_of(await client.call_tool("perf_offcpu_profile", {"duration_s": 2, "min_block_us": 5000000}))
            assert err["code"] == "INVALID_PARAMS" and err["recoverable"] is True, err
            assert "min_block_us 5000000" in err["message"] and "min_block_us <= 2000000" in err["suggestion"], err
            # the suggested fix works (locally: the fd table of the user's own process)
            ok = helpers.ok_data(await client.call_tool("perf_fd_trace", {"pid": sleeper.pid, "duration_s": 2,
                                                                          "interval_s": 1}))
            assert ok["pid"] == sleeper.pid and len(ok["samples"]) == 3
    finally:
        helpers.stop_process(sleeper)


# ---------------------------------------------------------------- with a real broker and polkit


@pytest.mark.root
@pytest.mark.slow
async def test_permission_denied_lists_the_tools_that_work_without_the_grant(
        broker_factory: Any, system_bus: None, test_users: helpers.TestUsers) -> None:
    broker = broker_factory()
    async with helpers.mcp_client(test_users.denied, broker.socket_path) as client:
        served = {t.name for t in (await client.list_tools()).tools}
        err = error_of(await client.call_tool("perf_runq_latency", {"duration_s": 1}))
        print(f"\n{err['message']}\n{err['suggestion']}")
        assert err["code"] == "PERMISSION_DENIED" and err["recoverable"] is True
        assert "'trace' grant" in err["message"], err
        listed_text = err["suggestion"].split("These tools work without the 'trace' grant: ", 1)[1].rstrip(".")
        listed = set(listed_text.split(", "))
        assert listed <= served
        assert {"perf_info", "perf_snapshot", "perf_use_check", "perf_net_health", "perf_cpu_profile"} <= listed
        assert not listed & {"perf_runq_latency", "perf_bio_latency", "perf_offcpu_profile", "perf_syscall_count"}
        # the profile grant refused: the trace tools are listed, perf_cpu_profile is not
        err = error_of(await client.call_tool("perf_cpu_profile", {"duration_s": 1}))
        assert err["code"] == "PERMISSION_DENIED" and "'profile' grant" in err["message"]
        assert "perf_runq_latency" in err["suggestion"] and "perf_cpu_profile" not in err["suggestion"]
        # and they do work for this user
        for tool in ("perf_info", "perf_snapshot", "perf_net_health", "perf_use_check"):
            data = helpers.ok_data(await client.call_tool(tool, {}))
            assert data["summary"], tool


@pytest.fixture
def polkit_without_our_actions(shared_tmp: Path) -> Iterator[str]:
    """A real polkitd on a private bus that does not know org.perfmcp.*: its own mount
    namespace binds a copy of the actions directory without our .policy file over
    /usr/share/polkit-1/actions. Yields the bus address. Both processes stopped by PID."""
    if not (os.path.exists(POLKITD) and shutil.which("dbus-daemon") and shutil.which("unshare")):
        pytest.fail(f"polkitd, dbus-daemon and unshare are needed: {helpers.SETUP_HINT}", pytrace=False)
    bus_path = shared_tmp / "bus.sock"
    conf = shared_tmp / "bus.conf"
    conf.write_text(helpers.PRIVATE_BUS_CONF.format(path=bus_path))
    actions = shared_tmp / "actions"
    actions.mkdir()
    for entry in os.scandir("/usr/share/polkit-1/actions"):
        if entry.name != os.path.basename(POLICY):
            shutil.copy(entry.path, actions / entry.name)
    daemon = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    polkitd = None
    address = f"unix:path={bus_path}"
    try:
        assert helpers.wait_until(bus_path.exists, 10.0), "the private dbus-daemon did not start"
        # unshare and sh exec in place: the PID is polkitd's
        polkitd = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f'mount --bind "$1" /usr/share/polkit-1/actions && exec {POLKITD} --no-debug', "sh", str(actions)],
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "DBUS_SYSTEM_BUS_ADDRESS": address},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def owned() -> bool:
            r = subprocess.run(["dbus-send", f"--bus={address}", "--print-reply", "--dest=org.freedesktop.DBus",
                                "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
                                "string:org.freedesktop.PolicyKit1"], capture_output=True, text=True)
            return "boolean true" in r.stdout

        assert helpers.wait_until(lambda: owned() or polkitd.poll() is not None, 15.0) and polkitd.poll() is None, \
            polkitd.stderr.read().decode() if polkitd.stderr and polkitd.poll() is not None else "polkitd did not start"
        assert os.path.exists(POLICY)  # the machine's own file is still there, outside the namespace
        yield address
    finally:
        if polkitd is not None:
            helpers.stop_process(polkitd)
            if polkitd.stderr:
                polkitd.stderr.close()
        helpers.stop_process(daemon)


@pytest.mark.root
@pytest.mark.slow
async def test_a_polkit_action_not_installed_is_a_setup_error_naming_the_file(
        polkit_without_our_actions: str, monkeypatch: pytest.MonkeyPatch, test_users: helpers.TestUsers) -> None:
    workdir = helpers.make_shared_tmpdir("pmcp-broker-")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", polkit_without_our_actions)  # the broker asks this polkit
    broker = helpers.start_broker(workdir)
    try:
        async with helpers.mcp_client(test_users.granted, broker.socket_path) as client:
            err = error_of(await client.call_tool("perf_runq_latency", {"duration_s": 1}))
            print(f"\n{err['code']}: {err['message']}\n{err['suggestion']}")
            assert err["code"] == "PERMISSION_DENIED" and err["recoverable"] is True, err
            assert err["message"].startswith("set-up: polkit does not know the action org.perfmcp.trace"), err
            assert POLICY in err["message"] and POLICY in err["suggestion"], err
            assert "org.perfmcp.policy" in err["suggestion"] and "install" in err["suggestion"]
            err = error_of(await client.call_tool("perf_cpu_profile", {"duration_s": 1}))
            assert err["code"] == "PERMISSION_DENIED" and "org.perfmcp.profile" in err["message"], err
            assert "These tools work without the 'profile' grant" in err["suggestion"], err
        assert "not registered" in broker.log_text()
    finally:
        problems = helpers.stop_broker(broker)
        helpers.remove_tree(workdir)
    assert not problems, problems


# ---------------------------------------------------------------- virtualisation


async def test_perf_info_tells_this_kvm_firecracker_guest(test_users: helpers.TestUsers, shared_tmp: Path) -> None:
    """This machine: /proc/cpuinfo's hypervisor flag, kvm-clock among the clock sources, no
    DMI; the kernel command line names Firecracker's init. The expected answer is read from
    those files here, so the test says what it sees on any machine."""
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    clocks = Path("/sys/devices/system/clocksource/clocksource0/available_clocksource").read_text().split()
    cmdline = Path("/proc/cmdline").read_text()
    async with helpers.mcp_client(test_users.denied, shared_tmp / "no-broker.sock") as client:
        data = helpers.ok_data(await client.call_tool("perf_info", {}))
    v = data["virtualisation"]
    print(f"\nvirtualisation: {v}\nsummary: {data['summary']}")
    assert v["virtualised"] is (" hypervisor" in flags or "kvm-clock" in clocks or v["hypervisor"] is not None)
    if "kvm-clock" in clocks:
        assert v["hypervisor"] == "kvm" and "clock source kvm-clock" in v["evidence"]
    if not os.path.isdir("/sys/class/dmi/id") and ("firecracker" in cmdline or "virtio_mmio.device=" in cmdline):
        assert v["vmm"] == "firecracker" and "(kvm, firecracker)" in data["summary"]
        vm = next(f for f in data["findings"] if f["id"] == "perf_info.virtual_machine")
        assert vm["title"] == "Running in a virtual machine (kvm, firecracker)"


def test_virtualisation_shapes_of_kvm_firecracker_and_bare_metal() -> None:
    from perf_mcp.sysinfo.parse import detect_virtualisation

    qemu_kvm = detect_virtualisation(hypervisor_flag=True, dmi={"sys_vendor": "QEMU\n", "product_name": "Standard PC"},
                                     hypervisor_type=None, container_markers={}, clocksources="kvm-clock tsc acpi_pm",
                                     cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda1", platform_devices=["serial8250"],
                                     dmi_present=True)
    assert (qemu_kvm.hypervisor, qemu_kvm.vmm) == ("kvm", "qemu")
    fc_mmio = detect_virtualisation(
        hypervisor_flag=True, dmi={}, hypervisor_type=None, container_markers={}, clocksources="kvm-clock tsc",
        cmdline="console=ttyS0 reboot=k panic=1 pci=off virtio_mmio.device=4K@0xd0000000:5 "
                "virtio_mmio.device=4K@0xd0001000:6", platform_devices=["virtio_mmio.0", "virtio_mmio.1"],
        dmi_present=False)
    assert (fc_mmio.hypervisor, fc_mmio.vmm) == ("kvm", "firecracker")
    assert "virtio-mmio devices (2 on the kernel command line)" in fc_mmio.evidence
    # no clock source list given (a kernel without kvm-clock exposed): the MMIO devices and no DMI still tell it
    fc_no_clock = detect_virtualisation(hypervisor_flag=True, dmi={}, hypervisor_type=None, container_markers={},
                                        platform_devices=["LNRO0005:00"], dmi_present=False)
    assert (fc_no_clock.hypervisor, fc_no_clock.vmm) == ("kvm", "firecracker")
    kvm_dmi = detect_virtualisation(hypervisor_flag=True, dmi={"sys_vendor": "KVM"}, hypervisor_type=None,
                                    container_markers={}, dmi_present=True)
    assert (kvm_dmi.hypervisor, kvm_dmi.vmm) == ("kvm", None)
    metal = detect_virtualisation(hypervisor_flag=False, dmi={"sys_vendor": "Dell Inc."}, hypervisor_type=None,
                                  container_markers={}, clocksources="tsc hpet acpi_pm", cmdline="root=/dev/sda1",
                                  platform_devices=["serial8250"], dmi_present=True)
    assert not metal.virtualised and metal.hypervisor is None and metal.vmm is None
