"""Worker processes: `workers N|auto` and `kittiwake run -j N` (docs/workers.md).

Strategy. Python runs one thread of Python at a time, so one process uses
one core. With more than one worker the main process becomes a
supervisor: it reads and checks the configuration, binds every listening
socket, runs what must exist once for the whole server (the queue
runners and their directory locks, the control socket, the metrics page,
the TLS report store, readiness and reloads), and starts N worker
processes that serve the mail endpoints on the sockets they inherit.

* `count` - how many: the directive, `-j`, `auto`;
* `channel` - the JSON line between the supervisor and each worker;
* `statehost` - the supervisor's store of counters, served to the workers;
* `spawn` - what a worker is started with, and starting it;
* `worker` - the worker process's side;
* `fleet` - the supervisor's side: generations of workers, restarts,
  stops, reloads, what workers report;
* `metrics` - one metrics page from the counts of every process.

`cli/supervised.py` is `kittiwake run` as a supervisor.
"""
