-- The payment gateway simulator's own records, standing in for what a payment provider keeps on
-- its side: one row per idempotency key. The simulator writes them in transactions of its own,
-- never in the service's, so what the "provider" did survives the service's rollbacks, retries
-- and restarts. The service itself never reads this table; a real gateway adapter has none.
create table simulated_charges (
    idempotency_key uuid primary key,
    order_id uuid not null,
    amount_minor bigint not null,
    currency text not null,
    -- The test card the e-mail stood for: ordinary, decline, flaky or fail.
    card text not null,
    -- Every call under this key, replays included.
    calls integer not null,
    -- Failed attempts so far (flaky fails twice per key, then succeeds).
    failed_attempts integer not null,
    -- The first final outcome, returned to every later call; null until there is one. A key
    -- that 'succeeded' is one charge that moved money.
    outcome text check (outcome in ('succeeded', 'declined')),
    first_call_time timestamptz not null default now(),
    last_call_time timestamptz not null default now()
);

-- Tests and the chaos ledger count the charges of an order.
create index simulated_charges_order_idx on simulated_charges (order_id);
