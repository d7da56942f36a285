-- Users registered through CreateUser: the source of every user_created event.
create table users (
    user_id uuid primary key,
    -- Stored as given (trimmed); uniqueness ignores case.
    email text not null,
    name text not null,
    plan text not null check (plan in ('basic', 'pro', 'enterprise')),
    -- The client's idempotency key (AIP-155): a retry with it returns this row.
    request_id uuid,
    create_time timestamptz not null default now(),
    constraint users_request_id_key unique (request_id)
);

-- One account per address, whatever its case.
create unique index users_email_key on users (lower(email));
