-- A charge is a recorded, resumable step. Its intent is committed first (a payment in
-- 'processing'), then the gateway is called outside any transaction with the order id as the
-- idempotency key, then the outcome is recorded with its payment_processed event. A crash or a
-- redelivery in between finds the intent and asks the gateway again under the same key: the
-- provider answers with the first outcome, never with a second charge.
alter table payments drop constraint payments_status_check;
alter table payments
    add constraint payments_status_check check (status in ('processing', 'succeeded', 'declined'));

-- When the outcome was recorded; null while the charge is processing.
alter table payments add column process_time timestamptz;
update payments set process_time = create_time;
alter table payments
    add constraint payments_process_time_check check ((status = 'processing') = (process_time is null));
