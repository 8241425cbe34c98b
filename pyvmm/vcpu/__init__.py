"""The vCPU threads: the runner, the exits they serve and where they go, the
exit event, emulation assist, exit statistics and the UART fast path."""
