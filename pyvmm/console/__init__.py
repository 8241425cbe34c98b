"""The consoles: the host terminal, the guest console as the API sees it, and
the pump between them."""
