"""vhost: the vhost-user front end pyvmm speaks, the back-end processes it starts, and the
kernel's vhost-vsock."""
