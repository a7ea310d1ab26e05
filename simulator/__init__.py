"""The simulator: real firmware under the MicroPython unix port, a headless fleet, a simulated province."""
