"""16550A registers with a recording interrupt line and output buffer."""

from __future__ import annotations

from pyvmm.devices import serial as uart
from pyvmm.devices.serial import Serial

from tests.unit.devices.conftest import FakeLine, rd


def make() -> tuple[Serial, FakeLine, bytearray]:
    line, out = FakeLine(), bytearray()
    return Serial(line, out.extend), line, out


def test_transmit_reaches_output() -> None:
    device, line, out = make()
    for byte in b"hi\n":
        device.write(uart.RBR_THR_DLL, bytes([byte]))
    assert out == b"hi\n"
    assert line.levels == []  # no interrupts enabled


def test_lsr_bits() -> None:
    device, _, _ = make()
    lsr = rd(device, uart.LSR)
    assert lsr & uart.LSR_THR_EMPTY and lsr & uart.LSR_TRANSMITTER_EMPTY
    assert not lsr & uart.LSR_DATA_READY
    device.enqueue_input(b"x")
    assert rd(device, uart.LSR) & uart.LSR_DATA_READY


def test_receive_with_interrupt() -> None:
    device, line, _ = make()
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    assert device.enqueue_input(b"ab") == 2
    assert line.high
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_RX_DATA
    assert rd(device, uart.RBR_THR_DLL) == ord("a")
    assert line.high
    assert rd(device, uart.RBR_THR_DLL) == ord("b")
    assert not line.high
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_NO_INTERRUPT


def test_thre_interrupt_on_enable_and_cleared_by_iir_read() -> None:
    device, line, _ = make()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    assert line.high
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_THR_EMPTY
    assert not line.high
    device.write(uart.RBR_THR_DLL, b"z")  # the byte leaves, THR empty again
    assert line.high


def test_rx_has_priority_over_thre() -> None:
    device, _, _ = make()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY | uart.IER_RX_DATA]))
    device.enqueue_input(b"q")
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_RX_DATA


def test_divisor_latch_and_scratch() -> None:
    device, _, out = make()
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))
    device.write(uart.RBR_THR_DLL, b"\x0c")
    device.write(uart.IER_DLM, b"\x01")
    assert rd(device, uart.RBR_THR_DLL) == 0x0C and rd(device, uart.IER_DLM) == 1
    device.write(uart.LCR, b"\x03")
    assert rd(device, uart.IER_DLM) == 0  # IER untouched by the divisor writes
    assert out == b""
    device.write(uart.SCR, b"\x5a")
    assert rd(device, uart.SCR) == 0x5A


def test_fifo_bits_in_iir() -> None:
    device, _, _ = make()
    device.write(uart.IIR_FCR, bytes([uart.FCR_ENABLE_FIFO]))
    assert rd(device, uart.IIR_FCR) & 0xC0 == 0xC0
    device.write(uart.IIR_FCR, b"\x00")
    assert rd(device, uart.IIR_FCR) & 0xC0 == 0


def test_loopback() -> None:
    device, _, out = make()
    device.write(uart.MCR, bytes([uart.MCR_LOOP | uart.MCR_RTS | uart.MCR_OUT2]))
    msr = rd(device, uart.MSR)
    assert msr & 0xF0 == uart.MSR_CTS | uart.MSR_DCD
    device.write(uart.RBR_THR_DLL, b"L")
    assert out == b""
    assert rd(device, uart.RBR_THR_DLL) == ord("L")
    device.write(uart.MCR, bytes([uart.MCR_OUT2]))
    assert rd(device, uart.MSR) & 0xF0 == uart.MSR_CONNECTED


def test_input_is_bounded() -> None:
    device, _, _ = make()
    assert device.enqueue_input(b"x" * (uart.INPUT_CAPACITY + 10)) == uart.INPUT_CAPACITY
    assert device.input_room() == 0


def test_output_waits_for_a_newline_then_goes_out_whole() -> None:
    pending: list[bool] = []
    device, _, out = make()
    device.on_pending = lambda: pending.append(True)
    for byte in b"boot: ":
        device.write(uart.RBR_THR_DLL, bytes([byte]))
    assert out == b"" and pending == [True]  # told once, not per byte
    for byte in b"ok\nnext":
        device.write(uart.RBR_THR_DLL, bytes([byte]))
    assert out == b"boot: ok\n"
    device.flush()
    assert out == b"boot: ok\nnext"
    device.flush()
    assert out == b"boot: ok\nnext"


def test_a_partial_line_is_flushed_after_the_delay() -> None:
    device, _, out = make()
    device.write(uart.RBR_THR_DLL, b"$")
    now = __import__("time").monotonic()
    wait = device.flush_due(now)
    assert wait is not None and 0 < wait <= uart.TX_FLUSH_DELAY and out == b""
    assert device.flush_due(now + uart.TX_FLUSH_DELAY) is not None
    assert out == b"$"
    assert device.flush_due(now + 1) is None  # nothing waits: the timer may stop


def test_output_without_newlines_is_bounded() -> None:
    device, _, out = make()
    device.transmit(b"x" * (uart.TX_BUFFER_BYTES + 5))
    assert len(out) == uart.TX_BUFFER_BYTES + 5


def test_flushes_from_two_threads_keep_the_order() -> None:
    import threading

    device, _, out = make()
    data = bytes(range(256)) * 200
    done = threading.Event()

    def flusher() -> None:
        while not done.is_set():
            device.flush()

    thread = threading.Thread(target=flusher)
    thread.start()
    for start in range(0, len(data), 7):
        device.transmit(data[start:start + 7])
    done.set()
    thread.join()
    device.flush()
    assert bytes(out) == data


def test_tx_polled_follows_thre_interrupt_and_loopback() -> None:
    modes: list[bool] = []
    device, _, _ = make()
    device.on_tx_polled = modes.append
    assert device.tx_polled
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    assert modes == []  # RX interrupts do not depend on transmitting
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA | uart.IER_THR_EMPTY]))
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    device.write(uart.MCR, bytes([uart.MCR_LOOP]))
    device.write(uart.MCR, bytes([uart.MCR_OUT2]))
    assert modes == [False, True, False, True]


def test_lsr_cell_is_what_a_read_returns() -> None:
    device, _, _ = make()
    assert device.cells[uart.CELL_LSR] == rd(device, uart.LSR)
    device.enqueue_input(b"ab")
    assert device.cells[uart.CELL_LSR] == rd(device, uart.LSR) and device.cells[uart.CELL_LSR] & uart.LSR_DATA_READY
    rd(device, uart.RBR_THR_DLL)
    rd(device, uart.RBR_THR_DLL)
    assert device.cells[uart.CELL_LSR] == rd(device, uart.LSR)
    assert not device.cells[uart.CELL_LSR] & uart.LSR_DATA_READY
    device.write(uart.MCR, bytes([uart.MCR_LOOP]))
    device.transmit(b"L")  # loopback: into the receiver
    assert device.cells[uart.CELL_LSR] == rd(device, uart.LSR) and device.cells[uart.CELL_LSR] & uart.LSR_DATA_READY
    device.enqueue_input(b"more")
    device.write(uart.IIR_FCR, bytes([uart.FCR_ENABLE_FIFO | uart.FCR_CLEAR_RX]))
    assert device.cells[uart.CELL_LSR] == rd(device, uart.LSR)


def test_ier_cells_follow_ier_and_dlab() -> None:
    device, _, _ = make()
    assert device.cells[uart.CELL_IER] == 0 and device.cells[uart.CELL_IER_VALID] == 1
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA | uart.IER_LINE_STATUS]))
    assert device.cells[uart.CELL_IER] == rd(device, uart.IER_DLM) == 0x05
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))
    assert device.cells[uart.CELL_IER_VALID] == 0  # offset 1 is the divisor latch now
    device.write(uart.IER_DLM, b"\x00")
    device.write(uart.LCR, b"\x03")
    assert device.cells[uart.CELL_IER_VALID] == 1 and device.cells[uart.CELL_IER] == 0x05


def test_transmit_under_dlab_sets_the_divisor() -> None:
    device, _, out = make()
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))
    device.transmit(b"\x01\x02\x03")
    assert rd(device, uart.RBR_THR_DLL) == 3
    device.flush()
    assert out == b""


def test_the_timer_flush_does_not_wait_behind_a_writer() -> None:
    import threading

    release = threading.Event()
    writing = threading.Event()
    chunks: list[bytes] = []

    def slow_out(data: bytes) -> None:
        writing.set()
        release.wait(5)
        chunks.append(data)

    device = Serial(FakeLine(), slow_out)
    device.transmit(b"first line\n"[:5])
    writer = threading.Thread(target=device.flush)
    writer.start()
    assert writing.wait(5)
    device.transmit(b"more")
    assert device.flush_due(__import__("time").monotonic() + 1) is not None  # no wait
    release.set()
    writer.join(5)
    device.flush()
    assert chunks == [b"first", b"more"]
