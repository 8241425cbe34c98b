"""The machine assembled and run: the builder (the recipe), the built machine,
virtio slot planning, shares, the control socket and signals."""
