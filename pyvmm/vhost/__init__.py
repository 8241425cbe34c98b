"""vhost-user: the front end pyvmm speaks and the back-end processes it starts."""
