-- The sign-up order of each user, created from user_created and settled by payment_processed.
create table orders (
    order_id uuid primary key,
    -- One sign-up order per user: the natural key that makes a re-sent user_created harmless
    -- even under a new message_id.
    user_id uuid not null,
    user_email text not null,
    plan text not null check (plan in ('basic', 'pro', 'enterprise')),
    amount_minor bigint not null check (amount_minor >= 0),
    currency text not null,
    status text not null check (status in ('pending_payment', 'paid', 'payment_declined')),
    create_time timestamptz not null default now(),
    update_time timestamptz not null default now(),
    constraint orders_user_id_key unique (user_id)
);

-- ListOrders pages a user's orders by (create_time, order_id).
create index orders_user_page_idx on orders (user_id, create_time, order_id);
