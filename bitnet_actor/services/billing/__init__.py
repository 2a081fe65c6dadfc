"""Billing: plans and quotas, the usage ledger, usage queries, invoices and Stripe.

- ``plans``: the ``plans`` table and what an organization runs under (:func:`plans.org_profile`);
- ``ledger``: the frozen usage event and the batch write the usage meter (``actors.meter``) makes;
- ``usage``: usage and cost queries in OpenAI's shape; ``invoices``: monthly invoices from the ledger;
- ``stripe``: customers, subscriptions and meter events through the ``stripe`` package; ``webhooks``: Stripe's
  events, verified and applied once; ``checkout``: Stripe Checkout and Billing Portal sessions (paying and
  managing payment on Stripe's own pages).
"""
