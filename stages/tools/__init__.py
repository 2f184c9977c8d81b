"""The user tools of `gps` (report, status, inspect, render, configure, resume, sweep, worker), apart from the steps."""
