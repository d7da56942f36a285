-- The inbox: every message a consumer has applied, keyed by consumer and message_id. It is
-- written in the same transaction as the message's effect, so a redelivered or replayed message
-- finds its row and is acknowledged without being applied again.
create table processed_messages (
    consumer text not null,
    message_id uuid not null,
    processed_at timestamptz not null default now(),
    primary key (consumer, message_id)
);
