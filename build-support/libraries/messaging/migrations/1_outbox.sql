-- The transactional outbox: an event is written here in the same transaction as the domain
-- change that caused it, and the relay publishes it to RabbitMQ, deleting the row only after
-- the broker confirmed it. A row is never lost; at worst it is published twice with the same
-- message_id, which the consumer's inbox absorbs.
create table outbox (
    message_id uuid primary key,
    -- Full protobuf name of the payload, sent as the AMQP `type` property.
    event_type text not null,
    routing_key text not null,
    payload bytea not null,
    correlation_id text not null,
    causation_id text not null,
    traceparent text not null,
    occurred_at timestamptz not null default now(),
    -- Delivery bookkeeping: failed publishes are retried with back-off.
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text
);

-- The relay claims the rows that are due, oldest first.
create index outbox_due_idx on outbox (next_attempt_at, occurred_at);

-- Wakes the relay as soon as a transaction that wrote to the outbox commits; NOTIFY is
-- delivered at commit, and several inserts in one transaction give one notification.
create function outbox_notify() returns trigger
language plpgsql as $$
begin
    perform pg_notify('outbox', '');
    return null;
end;
$$;

create trigger outbox_notify
after insert on outbox
for each statement execute function outbox_notify();
