"""Pure domain: webhook parsing, tasks, sessions, replies and Graph bodies. No I/O, no SDKs."""
