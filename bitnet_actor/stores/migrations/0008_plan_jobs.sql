-- 0008: conversion jobs are limited by plan: at most max_active_jobs unfinished (queued or running) jobs per
-- organization; a job's CPU time is recorded when it ends (what it cost this service, shown in the API).

ALTER TABLE plans ADD COLUMN max_active_jobs integer NOT NULL DEFAULT 4
    CHECK (max_active_jobs BETWEEN 1 AND 1000);
UPDATE plans SET max_active_jobs = CASE name WHEN 'free' THEN 1 WHEN 'pro' THEN 4 WHEN 'enterprise' THEN 16
                                             ELSE max_active_jobs END;

ALTER TABLE model_jobs ADD COLUMN cpu_seconds double precision NOT NULL DEFAULT 0 CHECK (cpu_seconds >= 0);
