"""A serial scanner through a real pty: the reader sees a tty as it would a /dev/ttyACM0, and closing
the pty's master is the unplug (the slave then reads EIO, as a vanished USB device does)."""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import serial

from hardware.serial_scanner import DropReason, SerialScanner, Suffix, close_exclusive, open_exclusive

GS1_DATAMATRIX = "]d2010400638133393110ABC123\x1d17260101"
EAN13 = "5901234123457"
TERMINATORS: dict[Suffix, bytes] = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}
TIOCGEXCL = 0x80045440  # _IOR('T', 0x40, int): is TIOCEXCL set? (Linux 3.8+, x86 and arm)


@dataclass
class Pty:
    master: int
    path: str
    open: bool = True

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def unplug(self) -> None:
        os.close(self.master)
        self.open = False


@pytest.fixture
def pty() -> Iterator[Pty]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)  # the scanner's reader holds the only slave fd, as it would a device's
    device = Pty(master, path)
    yield device
    if device.open:
        os.close(master)


@dataclass
class Received:
    """What a scanner's callbacks were given, in the order given."""

    codes: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    drops: list[tuple[int, DropReason]] = field(default_factory=list)
    ends: list[BaseException | None] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def on_code(self, code: str) -> None:
        with self.changed:
            self.codes.append(code)
            self.arrivals.append(time.monotonic())
            self.changed.notify_all()

    def on_dropped(self, chars: int, reason: DropReason) -> None:
        with self.changed:
            self.drops.append((chars, reason))
            self.changed.notify_all()

    def on_end(self, error: BaseException | None) -> None:
        with self.changed:
            self.ends.append(error)
            self.changed.notify_all()

    def wait(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(done, timeout), f"timed out: {self.codes[-3:]} {self.drops} {self.ends}"

    def wait_codes(self, count: int, timeout: float = 5.0) -> None:
        self.wait(lambda: len(self.codes) >= count, timeout)


def scanner_for(pty: Pty, received: Received, **config: object) -> SerialScanner:
    return SerialScanner(
        pty.path,
        on_code=received.on_code,
        on_dropped=received.on_dropped,
        on_end=received.on_end,
        **config,  # type: ignore[arg-type]
    )


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("serial-scanner")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def cpu_and_wakeups(thread: threading.Thread) -> tuple[int, int]:
    """A thread's CPU time (utime + stime, clock ticks) and its voluntary context switches: one per
    return from a sleep, so a reader that polls with a short timeout shows up even when it is cheap."""
    task = f"/proc/self/task/{thread.native_id}"
    with open(f"{task}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    with open(f"{task}/status") as status:
        switches = next(line for line in status if line.startswith("voluntary_ctxt_switches"))
    return int(fields[11]) + int(fields[12]), int(switches.split()[1])


@pytest.mark.parametrize("suffix", ["cr", "lf", "crlf"])
def test_each_suffix_ends_a_code_and_gs_is_kept(pty: Pty, suffix: Suffix) -> None:
    received = Received()
    with scanner_for(pty, received, suffix=suffix) as scanner:
        for code in (EAN13, GS1_DATAMATRIX, "ABC-123 x"):
            pty.write(code.encode("latin-1") + TERMINATORS[suffix])
        received.wait_codes(3)
    assert received.codes == [EAN13, GS1_DATAMATRIX, "ABC-123 x"]
    assert "\x1d" in received.codes[1]
    assert (scanner.codes, scanner.dropped_chars, received.drops, received.ends) == (3, 0, [], [None])


def test_no_suffix_a_pause_ends_the_code(pty: Pty) -> None:
    received = Received()
    with scanner_for(pty, received, suffix="none", gap=0.05):
        pty.write(GS1_DATAMATRIX[:10].encode())
        time.sleep(0.02)  # a pause shorter than the gap is inside a code
        pty.write(GS1_DATAMATRIX[10:].encode())
        received.wait_codes(1)
        pty.write(EAN13.encode())
        received.wait_codes(2)
    assert received.codes == [GS1_DATAMATRIX, EAN13]
    assert received.drops == []


def test_latin1_bytes_arrive_as_sent(pty: Pty) -> None:
    """Every byte 0x20-0xff and GS: the tty is raw (no CR translation, no XON/XOFF, no 8th bit stripped)."""
    every = bytes([0x1D, *range(0x20, 0x100)])
    received = Received()
    with scanner_for(pty, received, suffix="cr"):
        pty.write(every + b"\r")
        received.wait_codes(1)
    assert received.codes == [every.decode("latin-1")]


def test_many_codes_in_one_write_and_a_code_split_byte_by_byte(pty: Pty) -> None:
    codes = [f"{GS1_DATAMATRIX}\x1d21SN{n:04}" for n in range(50)]
    received = Received()
    with scanner_for(pty, received, suffix="crlf"):
        pty.write(b"".join(code.encode() + b"\r\n" for code in codes))
        received.wait_codes(50)
        for byte in (EAN13 + "\r\n").encode():
            pty.write(bytes([byte]))
            time.sleep(0.002)  # each byte its own read, the CR and the LF of the suffix too
        received.wait_codes(51)
    assert received.codes == [*codes, EAN13]
    assert received.drops == []


@pytest.mark.parametrize("pace", [0.01, 0.0], ids=["100-per-s", "burst"])
def test_thirty_codes_a_second_and_more_with_none_dropped(pty: Pty, pace: float) -> None:
    codes = [f"{GS1_DATAMATRIX}\x1d21SN{n:05}" for n in range(300)]
    received = Received()
    with scanner_for(pty, received, suffix="cr") as scanner:
        started = time.monotonic()
        for code in codes:
            pty.write(code.encode() + b"\r")
            if pace:
                time.sleep(pace)
        received.wait_codes(len(codes), timeout=30)
        elapsed = received.arrivals[-1] - started
    assert received.codes == codes
    assert (scanner.dropped_chars, received.drops) == (0, [])
    assert len(codes) / elapsed >= 30


def test_unplugged_mid_code_the_reader_ends_and_reports_the_partial(pty: Pty) -> None:
    received = Received()
    scanner = scanner_for(pty, received, suffix="cr")
    scanner.start()
    pty.write(f"{EAN13}\r0104006381".encode())
    received.wait_codes(1)
    wait_until(lambda: scanner.partial_chars == 10)  # the partial is read before the unplug
    pty.unplug()
    received.wait(lambda: len(received.ends) == 1, timeout=1.0)
    assert received.codes == [EAN13]  # what was complete is kept
    assert received.drops == [(10, "vanished")]
    assert isinstance(received.ends[0], serial.SerialException)
    assert scanner.error is received.ends[0]
    assert (scanner.codes, scanner.dropped_chars) == (1, 10)
    wait_until(lambda: not reader_threads(), timeout=1.0)  # ended by itself, nobody called close()
    assert not scanner.running
    scanner.close()  # still fine to call
    assert received.drops == [(10, "vanished")]


def test_closed_mid_code_the_partial_is_reported_dropped(pty: Pty) -> None:
    received = Received()
    scanner = scanner_for(pty, received, suffix="cr")
    scanner.start()
    pty.write(b"ABC")
    wait_until(lambda: scanner.partial_chars == 3)
    started = time.monotonic()
    scanner.close()
    assert time.monotonic() - started < 0.5  # prompt: the reader's poll is woken, not timed out
    assert (received.codes, received.drops, received.ends) == ([], [(3, "closed")], [None])
    assert scanner.dropped_chars == 3
    assert not reader_threads()


def test_close_delivers_the_codes_already_received_first(pty: Pty) -> None:
    """Codes that reached the port while a slow callback held the reader are read at close, not lost."""
    in_callback = threading.Event()
    received = Received()

    def slow_on_code(code: str) -> None:
        if code == "SLOW":
            in_callback.set()
            time.sleep(0.3)
        received.on_code(code)

    scanner = SerialScanner(pty.path, on_code=slow_on_code, on_dropped=received.on_dropped, suffix="cr")
    scanner.start()
    pty.write(b"SLOW\r")
    assert in_callback.wait(5)
    pty.write(b"A\rB\rPAR")
    time.sleep(0.05)  # into the tty's input queue
    scanner.close()
    assert received.codes == ["SLOW", "A", "B"]
    assert received.drops == [(3, "closed")]


@pytest.mark.parametrize("suffix", ["cr", "none"])
def test_an_idle_reader_uses_no_cpu(pty: Pty, suffix: Suffix) -> None:
    received = Received()
    with scanner_for(pty, received, suffix=suffix):
        pty.write(b"5901234123457\r" if suffix == "cr" else b"5901234123457")
        received.wait_codes(1)
        (thread,) = reader_threads()
        ticks_before, wakeups_before = cpu_and_wakeups(thread)
        time.sleep(1.0)
        ticks_after, wakeups_after = cpu_and_wakeups(thread)
    assert ticks_after - ticks_before <= 2  # a spinning reader uses ~100 ticks a second
    assert wakeups_after - wakeups_before <= 2  # and one polling every 50 ms wakes 20 times


def test_two_hundred_open_close_cycles_and_fifty_unplugs_leak_nothing(pty: Pty) -> None:
    fds_before = open_fds()
    for n in range(200):
        received = Received()
        with scanner_for(pty, received, suffix="cr"):
            pty.write(f"CODE{n}\r".encode())
            received.wait_codes(1)
        assert received.codes == [f"CODE{n}"]
    for _ in range(50):
        master, slave = os.openpty()
        device = Pty(master, os.ttyname(slave))
        os.close(slave)
        received = Received()
        scanner = scanner_for(device, received, suffix="cr")
        scanner.start()
        device.write(b"PART")
        wait_until(lambda: scanner.partial_chars == 4)  # noqa: B023 (waited for inside the iteration)
        device.unplug()
        received.wait(lambda: bool(received.ends))  # noqa: B023
        assert received.drops == [(4, "vanished")]
    wait_until(lambda: not reader_threads(), timeout=2.0)
    assert open_fds() == fds_before


def test_the_port_is_held_exclusively_and_released(pty: Pty) -> None:
    port = open_exclusive(pty.path)
    try:
        assert struct.unpack("i", fcntl.ioctl(port.fileno(), TIOCGEXCL, b"\0" * 4))[0] == 1
        with pytest.raises(serial.SerialException, match="exclusively lock"):
            open_exclusive(pty.path)  # refused by the flock even to root, who passes TIOCEXCL
    finally:
        close_exclusive(port)
    # The pty's tty outlives our fd, and with it TIOCEXCL unless cleared: every later open by a
    # non-root process (the box's own service) would then fail with EBUSY.
    fd = os.open(pty.path, os.O_RDWR | os.O_NOCTTY)
    try:
        assert struct.unpack("i", fcntl.ioctl(fd, TIOCGEXCL, b"\0" * 4))[0] == 0
    finally:
        os.close(fd)
    again = open_exclusive(pty.path)
    close_exclusive(again)


def test_a_missing_port_fails_at_start_and_leaks_nothing(tmp_path: object) -> None:
    fds_before = open_fds()
    scanner = SerialScanner("/dev/ttyACM-not-there", on_code=lambda code: None)
    with pytest.raises(serial.SerialException):
        scanner.start()
    scanner.close()
    assert not reader_threads()
    assert open_fds() == fds_before


def test_a_code_without_end_is_dropped_at_the_limit(pty: Pty) -> None:
    received = Received()
    with scanner_for(pty, received, suffix="cr", max_code_chars=16):
        pty.write(b"X" * 20)  # a scanner sending LF to a box expecting CR: no code ever ends
        received.wait(lambda: bool(received.drops))
        pty.write(b"OK\r")
        received.wait_codes(1)
    assert received.drops == [(20, "too_long")]
    assert received.codes == ["OK"]


def test_bytes_the_encoding_cannot_read_are_dropped_not_mangled(pty: Pty) -> None:
    received = Received()
    with scanner_for(pty, received, suffix="cr", encoding="utf-8"):
        pty.write(b"AB\xff\r" + "Größe\r".encode())
        received.wait_codes(1)
    assert received.drops == [(3, "undecodable")]
    assert received.codes == ["Größe"]


def test_a_failing_callback_does_not_stop_the_reader(pty: Pty) -> None:
    received = Received()

    def on_code(code: str) -> None:
        received.on_code(code)
        if code == "BAD":
            raise RuntimeError("the service's bug")

    with SerialScanner(pty.path, on_code=on_code, suffix="cr"):
        pty.write(b"BAD\rGOOD\r")
        received.wait_codes(2)
    assert received.codes == ["BAD", "GOOD"]


def test_close_from_a_callback_does_not_deadlock(pty: Pty) -> None:
    received = Received()
    scanner: SerialScanner

    def on_code(code: str) -> None:
        received.on_code(code)
        scanner.close()

    scanner = SerialScanner(pty.path, on_code=on_code, on_end=received.on_end, suffix="cr")
    scanner.start()
    pty.write(b"LAST\r")
    received.wait(lambda: bool(received.ends))
    assert received.codes == ["LAST"]
    assert received.ends == [None]
    wait_until(lambda: not reader_threads())


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"suffix": "tab"}, ValueError),
        ({"gap": 0}, ValueError),
        ({"encoding": "no-such-codec"}, LookupError),
    ],
)
def test_a_wrong_configuration_is_refused_before_any_thread(config: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        SerialScanner("/dev/ttyACM0", on_code=lambda code: None, **config)  # type: ignore[arg-type]
