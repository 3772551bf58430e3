"""`pyloto bench`: latency and throughput of the real pipeline over real HTTP, with fake peers.

`run_bench(BenchConfig(...))` starts a fake OpenAI-compatible server (a subprocess), a fake
Graph API (in this process, so reply arrival times share the load generator's clock) and
`python -m pyloto_cli serve` on a fresh data directory; sends signed webhooks open-loop at a
rate or closed-loop at a concurrency; waits for the replies; and returns a `BenchReport`.
Everything binds 127.0.0.1 and is stopped on the way out, on errors and Ctrl-C too.
"""

from pyloto_cli.bench.report import BenchReport, Latency
from pyloto_cli.bench.runner import BenchConfig, BenchProgress, run_bench

__all__ = ["BenchConfig", "BenchProgress", "BenchReport", "Latency", "run_bench"]
