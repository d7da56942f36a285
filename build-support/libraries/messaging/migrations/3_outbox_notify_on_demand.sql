-- Rows written through a service's dispatcher are published by that process right after its
-- commit, so a NOTIFY on every insert only woke relays that found nothing to claim (and every
-- notifying commit takes a lock shared by all of them). Writers of rows due at once now notify
-- themselves (`messaging::outbox::enqueue_all`).
drop trigger outbox_notify on outbox;
drop function outbox_notify();
