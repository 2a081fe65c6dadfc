-- 0007: leases of conversion jobs (actors/jobs.py).
--
-- A worker that takes a job holds it until lease_until, pushing it forward with heartbeats while it runs;
-- a job whose lease ran out (its worker was cancelled or its process killed) is taken up again by another
-- worker, which claims it only if the lease is still the expired one. attempts counts the claims; a job
-- whose attempts reach max_attempts fails for good (and its stream entry goes to the dead-letter stream).

ALTER TABLE model_jobs
    ADD COLUMN max_attempts integer     NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    ADD COLUMN worker       text,        -- the worker holding the lease while running
    ADD COLUMN lease_until  timestamptz, -- visibility deadline: past it another worker may take the job
    ADD COLUMN heartbeat_at timestamptz;
