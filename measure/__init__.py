"""Running candidates on the device: correctness, latency and energy."""
