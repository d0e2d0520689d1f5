#!/usr/bin/env python3
"""kumo-vmm benchmarks (figures, not assertions): run `bench/vmm/run` to build and run them.

1. Boot latency: time from starting the VMM process to the guest's first serial byte, for the
   same tiny PVH guest (vmm/guests/asm/pvh_hello.S: its first instruction after `cli` writes
   'K' to COM1) under kumo-vmm and under QEMU `-M microvm` (the peer), several interleaved runs,
   printed as min/median/max and the median ratio. Also the time to process exit.
2. Memory: the VMM's own resident memory beyond what the guest touched, with the pvh_idle guest
   (prints a line, then `sti; hlt` for ever) and 128 MiB: the RSS of the guest-RAM mapping (found
   in /proc/PID/smaps by its size) is subtracted from the process RSS. Goal for kumo-vmm:
   <= 4 MiB. QEMU's figure for the same guest is printed beside it.
"""
import argparse
import os
import select
import statistics
import subprocess
import sys
import time


def first_byte_and_exit(cmd, timeout=20.0):
    """(seconds to the first stdout byte, seconds to exit, all output) for one run."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = None
    out = b""
    fd = p.stdout.fileno()
    deadline = start + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            p.kill()
            p.wait()
            raise RuntimeError(f"timed out: {' '.join(cmd)}")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - start
        out += chunk
    p.wait()
    end = time.perf_counter() - start
    err = p.stderr.read().decode(errors="replace")
    if first is None:
        raise RuntimeError(f"no serial output from {' '.join(cmd)}: {err}")
    return first, end, out.decode(errors="replace"), p.returncode, err


def summary(xs):
    xs = sorted(xs)
    return f"min {xs[0]*1000:7.2f}  median {statistics.median(xs)*1000:7.2f}  max {xs[-1]*1000:7.2f} ms"


def rss_kib(pid, guest_kib):
    """(total RSS, RSS of the guest-memory mapping) in KiB from /proc/PID/smaps."""
    total, guest = 0, 0
    size = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts[0] == "Size:":
                size = int(parts[1])
            elif parts[0] == "Rss:":
                rss = int(parts[1])
                total += rss
                if size == guest_kib:
                    guest += rss
    return total, guest


def measure_memory(cmd, guest_kib, ready_text, settle=1.0):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out = b""
        deadline = time.time() + 20
        while ready_text.encode() not in out and time.time() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        if ready_text.encode() not in out:
            raise RuntimeError(f"guest did not become ready: {out!r}")
        time.sleep(settle)
        return rss_kib(p.pid, guest_kib)
    finally:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kumo-vmm", required=True)
    ap.add_argument("--pvh-guest", required=True, help="the assembled pvh_hello ELF")
    ap.add_argument("--pvh-idle-guest", required=True, help="the assembled pvh_idle ELF")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    a = ap.parse_args()

    kumo = [a.kumo_vmm, "--kernel", a.pvh_guest, "--memory-mib", "64", "--console", "stdio"]
    qemu = [a.qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off", "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-m", "64", "-nodefaults", "-no-user-config",
            "-nographic", "-display", "none", "-serial", "stdio", "-kernel", a.pvh_guest,
            "-device", "isa-debug-exit,iobase=0xf4", "-no-reboot"]
    have_qemu = subprocess.run(["sh", "-c", f"command -v {a.qemu}"], capture_output=True).returncode == 0

    print(f"machine: {os.uname().nodename}, {os.cpu_count()} CPUs, kernel {os.uname().release}, "
          f"kvm-pvm: {os.path.exists('/sys/module/kvm_pvm')}")
    print(f"guest: {a.pvh_guest} (PVH entry, first serial byte right after entry)")
    k_first, k_end, q_first, q_end = [], [], [], []
    # Warm up page cache for both binaries.
    first_byte_and_exit(kumo)
    if have_qemu:
        first_byte_and_exit(qemu)
    for _ in range(a.runs):
        f, e, out, rc, err = first_byte_and_exit(kumo)
        if rc != 0 or "memory map ok" not in out:
            sys.exit(f"kumo-vmm run failed (exit {rc}): {out!r} {err}")
        k_first.append(f)
        k_end.append(e)
        if have_qemu:
            f, e, out, rc, err = first_byte_and_exit(qemu)
            if "memory map ok" not in out:
                sys.exit(f"qemu run failed (exit {rc}): {out!r} {err}")
            q_first.append(f)
            q_end.append(e)

    print(f"\nboot latency, {a.runs} interleaved runs each (process start -> first serial byte):")
    print(f"  kumo-vmm           {summary(k_first)}")
    if have_qemu:
        print(f"  qemu -M microvm    {summary(q_first)}")
        print(f"  ratio qemu/kumo-vmm (medians): {statistics.median(q_first)/statistics.median(k_first):.2f}x")
    print("process start -> exit (guest reset / debug-exit):")
    print(f"  kumo-vmm           {summary(k_end)}")
    if have_qemu:
        print(f"  qemu -M microvm    {summary(q_end)}")
        print(f"  ratio qemu/kumo-vmm (medians): {statistics.median(q_end)/statistics.median(k_end):.2f}x")

    guest_kib = 128 * 1024
    print("\nmemory: pvh_idle guest with 128 MiB, idling (RSS of the process minus RSS of the guest RAM mapping):")
    total, guest = measure_memory([a.kumo_vmm, "--kernel", a.pvh_idle_guest, "--memory-mib", "128",
                                   "--console", "stdio"], guest_kib, "pvh idle: ready")
    own = total - guest
    print(f"  kumo-vmm           RSS {total:6d} KiB, guest RAM touched {guest:5d} KiB, VMM's own {own:6d} KiB "
          f"({own/1024:.2f} MiB; goal <= 4 MiB: {'met' if own <= 4096 else 'NOT met'})")
    if have_qemu:
        qcmd = [x if x != a.pvh_guest else a.pvh_idle_guest for x in qemu]
        qcmd[qcmd.index("-m") + 1] = "128"
        qtotal, qguest = measure_memory(qcmd, guest_kib, "pvh idle: ready")
        print(f"  qemu -M microvm    RSS {qtotal:6d} KiB, guest RAM touched {qguest:5d} KiB, VMM's own {qtotal - qguest:6d} KiB")
        print(f"  ratio qemu/kumo-vmm (own memory): {(qtotal - qguest) / max(own, 1):.2f}x")


if __name__ == "__main__":
    main()
