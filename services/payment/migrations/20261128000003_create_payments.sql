-- The one payment made for each order, from order_created.
create table payments (
    payment_id uuid primary key,
    -- One payment per order: the natural key that makes a re-sent order_created harmless even
    -- under a new message_id.
    order_id uuid not null,
    user_id uuid not null,
    amount_minor bigint not null check (amount_minor >= 0),
    currency text not null,
    status text not null check (status in ('succeeded', 'declined')),
    -- Why the gateway declined; null when it succeeded.
    decline_reason text,
    create_time timestamptz not null default now(),
    constraint payments_order_id_key unique (order_id)
);

-- ListPayments pages by (create_time, payment_id), filtered by user and/or order.
create index payments_user_page_idx on payments (user_id, create_time, payment_id);
