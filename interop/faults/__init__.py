"""The fault harness: load clients that record histories, and the faults (processes, proxies, netns)."""
