"""16550A registers with a recording interrupt line and output buffer.

Each test runs twice (the ``make_serial`` fixture): against the Python
reference alone, and with the registers' C side in front of it, serving what
the vCPU's C loop serves on the same state.
"""

from __future__ import annotations

from pyvmm.devices import serial as uart
from pyvmm.devices.serial import Serial

from tests.unit.devices.conftest import FakeLine, MakeSerial, rd, told


def test_transmit_reaches_output(make_serial: MakeSerial) -> None:
    device, line, out = make_serial()
    for byte in b"hi\n":
        device.write(uart.RBR_THR_DLL, bytes([byte]))
    assert out == b"hi\n"
    assert line.levels == []  # no interrupts enabled


def test_lsr_bits(make_serial: MakeSerial) -> None:
    device, _, _ = make_serial()
    lsr = rd(device, uart.LSR)
    assert lsr & uart.LSR_THR_EMPTY and lsr & uart.LSR_TRANSMITTER_EMPTY
    assert not lsr & uart.LSR_DATA_READY
    device.enqueue_input(b"x")
    assert rd(device, uart.LSR) & uart.LSR_DATA_READY


def test_receive_with_interrupt(make_serial: MakeSerial) -> None:
    device, line, _ = make_serial()
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    assert device.enqueue_input(b"ab") == 2
    assert line.high
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_RX_DATA
    assert rd(device, uart.RBR_THR_DLL) == ord("a")
    assert line.high
    assert rd(device, uart.RBR_THR_DLL) == ord("b")
    assert not line.high
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_NO_INTERRUPT


def test_thre_interrupt_on_enable_and_cleared_by_iir_read(make_serial: MakeSerial) -> None:
    device, line, _ = make_serial()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    assert line.high
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_THR_EMPTY
    assert not line.high
    device.write(uart.RBR_THR_DLL, b"z")  # the byte leaves, THR empty again
    assert line.high


def test_rx_has_priority_over_thre(make_serial: MakeSerial) -> None:
    device, _, _ = make_serial()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY | uart.IER_RX_DATA]))
    device.enqueue_input(b"q")
    assert rd(device, uart.IIR_FCR) & 0x0F == uart.IIR_RX_DATA


def test_divisor_latch_and_scratch(make_serial: MakeSerial) -> None:
    device, _, out = make_serial()
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))
    device.write(uart.RBR_THR_DLL, b"\x0c")
    device.write(uart.IER_DLM, b"\x01")
    assert rd(device, uart.RBR_THR_DLL) == 0x0C and rd(device, uart.IER_DLM) == 1
    device.write(uart.LCR, b"\x03")
    assert rd(device, uart.IER_DLM) == 0  # IER untouched by the divisor writes
    assert out == b""
    device.write(uart.SCR, b"\x5a")
    assert rd(device, uart.SCR) == 0x5A


def test_fifo_bits_in_iir(make_serial: MakeSerial) -> None:
    device, _, _ = make_serial()
    device.write(uart.IIR_FCR, bytes([uart.FCR_ENABLE_FIFO]))
    assert rd(device, uart.IIR_FCR) & 0xC0 == 0xC0
    device.write(uart.IIR_FCR, b"\x00")
    assert rd(device, uart.IIR_FCR) & 0xC0 == 0


def test_loopback(make_serial: MakeSerial) -> None:
    device, _, out = make_serial()
    device.write(uart.MCR, bytes([uart.MCR_LOOP | uart.MCR_RTS | uart.MCR_OUT2]))
    msr = rd(device, uart.MSR)
    assert msr & 0xF0 == uart.MSR_CTS | uart.MSR_DCD
    device.write(uart.RBR_THR_DLL, b"L")
    assert out == b""
    assert rd(device, uart.RBR_THR_DLL) == ord("L")
    device.write(uart.MCR, bytes([uart.MCR_OUT2]))
    assert rd(device, uart.MSR) & 0xF0 == uart.MSR_CONNECTED


def test_input_is_bounded(make_serial: MakeSerial) -> None:
    device, _, _ = make_serial()
    assert device.enqueue_input(b"x" * (uart.INPUT_CAPACITY + 10)) == uart.INPUT_CAPACITY
    assert device.input_room() == 0


def test_output_waits_for_a_newline_then_goes_out_whole(make_serial: MakeSerial) -> None:
    pending: list[bool] = []
    device, _, out = make_serial()
    device.on_pending = lambda: pending.append(True)
    for byte in b"boot: ":
        device.write(uart.RBR_THR_DLL, bytes([byte]))
    assert out == b"" and told(device, pending) == 1  # once, not per byte
    for byte in b"ok\nnext":
        device.write(uart.RBR_THR_DLL, bytes([byte]))
    assert out == b"boot: ok\n"
    device.flush()
    assert out == b"boot: ok\nnext"
    device.flush()
    assert out == b"boot: ok\nnext"


def test_a_partial_line_is_flushed_after_the_delay(make_serial: MakeSerial) -> None:
    device, _, out = make_serial()
    device.write(uart.RBR_THR_DLL, b"$")
    now = __import__("time").monotonic()
    wait = device.flush_due(now)
    assert wait is not None and 0 < wait <= uart.TX_FLUSH_DELAY and out == b""
    assert device.flush_due(now + uart.TX_FLUSH_DELAY) is not None
    assert out == b"$"
    assert device.flush_due(now + 1) is None  # nothing waits: the timer may stop


def test_output_without_newlines_is_bounded(make_serial: MakeSerial) -> None:
    device, _, out = make_serial()
    device.transmit(b"x" * (uart.TX_BUFFER_BYTES + 5))
    assert len(out) == uart.TX_BUFFER_BYTES  # a full buffer went out, 5 bytes wait
    device.flush()
    assert out == b"x" * (uart.TX_BUFFER_BYTES + 5)


def test_flushes_from_two_threads_keep_the_order(make_serial: MakeSerial) -> None:
    import threading

    device, _, out = make_serial()
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
    """The Python side's signal (the C side's rule: tests/unit/vcpu/test_uart_fastpath.py)."""
    modes: list[bool] = []
    device = Serial(FakeLine(), bytearray().extend)
    device.on_tx_polled = modes.append
    assert device.tx_polled
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    assert modes == []  # RX interrupts do not depend on transmitting
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA | uart.IER_THR_EMPTY]))
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    device.write(uart.MCR, bytes([uart.MCR_LOOP]))
    device.write(uart.MCR, bytes([uart.MCR_OUT2]))
    assert modes == [False, True, False, True]


def test_the_state_holds_what_reads_return(make_serial: MakeSerial) -> None:
    """``state`` is the one record of the registers: the other side reads it."""
    device, _, _ = make_serial()
    state = device.state
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA | uart.IER_LINE_STATUS]))
    device.write(uart.MCR, bytes([uart.MCR_OUT2 | uart.MCR_RTS]))
    device.write(uart.SCR, b"\x42")
    device.write(uart.LCR, bytes([uart.LCR_DLAB | 0x03]))
    device.write(uart.RBR_THR_DLL, b"\x0c")
    device.write(uart.IER_DLM, b"\x01")
    assert (state[uart.ST_IER], state[uart.ST_MCR], state[uart.ST_SCR], state[uart.ST_LCR],
            state[uart.ST_DLL], state[uart.ST_DLM]) == (0x05, 0x0A, 0x42, 0x83, 0x0C, 0x01)
    device.write(uart.LCR, b"\x03")
    assert state[uart.ST_LSR] | uart.LSR_DATA_READY * state[uart.ST_RX] == rd(device, uart.LSR)
    device.enqueue_input(b"ab")
    assert state[uart.ST_RX] == 1 and rd(device, uart.LSR) & uart.LSR_DATA_READY
    assert state[uart.ST_IRQ] == 1  # RX interrupt enabled, data waiting
    rd(device, uart.RBR_THR_DLL)
    rd(device, uart.RBR_THR_DLL)
    assert state[uart.ST_RX] == 0 and state[uart.ST_IRQ] == 0
    device.write(uart.RBR_THR_DLL, b"x")
    assert device.state[uart.ST_TX_LEN] == 1 and state[uart.ST_THRE] == 1
    device.write(uart.IIR_FCR, bytes([uart.FCR_ENABLE_FIFO]))
    assert state[uart.ST_FIFO] == 1


def test_transmit_under_dlab_sets_the_divisor(make_serial: MakeSerial) -> None:
    device, _, out = make_serial()
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))
    device.transmit(b"\x01\x02\x03")
    assert rd(device, uart.RBR_THR_DLL) == 3
    device.flush()
    assert out == b""


def test_the_timer_flush_does_not_wait_behind_a_writer(make_serial: MakeSerial) -> None:
    import threading

    release = threading.Event()
    writing = threading.Event()
    chunks: list[bytes] = []

    def slow_out(data: bytes) -> None:
        writing.set()
        release.wait(5)
        chunks.append(data)

    device, _, _ = make_serial(slow_out)
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


def test_input_wraps_around_its_ring(make_serial: MakeSerial) -> None:
    """The receive ring's end is no seam: bytes queued across it come out in order."""
    device, line, _ = make_serial()
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    assert device.enqueue_input(b"." * (uart.INPUT_CAPACITY - 3)) == uart.INPUT_CAPACITY - 3
    for _ in range(uart.INPUT_CAPACITY - 3):
        rd(device, uart.RBR_THR_DLL)
    assert not line.high and device.input_room() == uart.INPUT_CAPACITY
    assert device.enqueue_input(b"wrapped") == 7  # 3 bytes before the end, 4 after
    assert device.enqueue_input(b"x" * uart.INPUT_CAPACITY) == uart.INPUT_CAPACITY - 7
    assert bytes(rd(device, uart.RBR_THR_DLL) for _ in range(8)) == b"wrappedx"
    device.write(uart.IIR_FCR, bytes([uart.FCR_ENABLE_FIFO | uart.FCR_CLEAR_RX]))
    assert not line.high and not rd(device, uart.LSR) & uart.LSR_DATA_READY
    assert device.input_room() == uart.INPUT_CAPACITY
