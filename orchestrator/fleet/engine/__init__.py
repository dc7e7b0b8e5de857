"""The distributed engine: a run's (host, case) jobs in a PostgreSQL queue (procrastinate),
run by workers that sit in each lab site's network. The local runner (fleet/runner.py)
stays the default and needs no database.

    app.py      the queue's database: DSN, reachability, schema, the procrastinate App
    jobs.py     the one job kind (run one case of one host) and the case executor seam
    submit.py   queue a run: run folder, run-request.json, one job per (host, case)
    worker.py   run a lab's jobs; stalled.py retries the jobs of dead workers
    execute.py  the real case executor (wired by the fleet's single-case function)
"""
