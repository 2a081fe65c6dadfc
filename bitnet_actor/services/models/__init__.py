"""Customers' models: the registry (versions, aliases, lineage), uploads, archives and inspection, jobs,
routes and encryption at rest."""
